import GRDB

extension StateDatabase {
    /// The latest `limit` events, newest first; of `kind` only, when given.
    public func events(kind: String?, limit: Int) throws -> [EventRecord] {
        try read { db in
            var request = EventRecord.all()
            if let kind { request = request.filter(Column("kind") == kind) }
            return try request.order(Column("id").desc).limit(limit).fetchAll(db)
        }
    }

    /// How many events of `kind` were ever recorded, also those the log no longer keeps: it
    /// only grows, as the metrics' counters must.
    public func eventCount(kind: String) throws -> Int {
        try read { db in try Int.fetchOne(db, sql: "SELECT total FROM eventCount WHERE kind = ?", arguments: [kind]) ?? 0 }
    }
}
