import Foundation
import GRDB

/// A snapshot store being grown (table `storeGrowth`): written before the store's file is
/// grown and deleted, in the same transaction that records the new size on the snapshot, once
/// the kernel uses the new space. A row left behind by a crash tells `reconcile` which size to
/// finish growing to.
public struct StoreGrowthRecord: Codable, Sendable, Equatable, Hashable,
    FetchableRecord, PersistableRecord
{
    public static let databaseTableName = "storeGrowth"

    /// The snapshot whose store grows; one growth at a time per snapshot.
    public var snapshotID: String
    /// The store's size before, as the snapshot record had it.
    public var fromBytes: Int64
    /// The size the store grows to.
    public var toBytes: Int64
    /// Kept to the millisecond, as the database stores it.
    public var startedAt: Date

    /// Makes a record; `startedAt` is rounded to what the database keeps.
    public init(snapshotID: String, fromBytes: Int64, toBytes: Int64, startedAt: Date = Date()) {
        self.snapshotID = snapshotID
        self.fromBytes = fromBytes
        self.toBytes = toBytes
        self.startedAt = startedAt.storedPrecision
    }
}

enum StoreGrowthSchema {
    /// Appended to the schema's migrations; never edited once released.
    static func register(in migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v2-store-growth") { db in
            try db.create(table: "storeGrowth") { t in
                // Deleting the snapshot (drop, unprotect) forgets its unfinished growth too.
                t.primaryKey("snapshotID", .text)
                    .references("snapshot", onDelete: .cascade)
                t.column("fromBytes", .integer).notNull()
                t.column("toBytes", .integer).notNull()
                t.column("startedAt", .datetime).notNull()
            }
        }
    }
}

extension StateDatabase {
    /// Records the intent to grow a snapshot's store, replacing an unfinished one of the
    /// same snapshot. The snapshot must exist.
    public func begin(_ growth: StoreGrowthRecord) throws {
        try write { try growth.save($0) }
    }

    /// The unfinished growth of a snapshot's store, if any.
    public func storeGrowth(snapshotID: String) throws -> StoreGrowthRecord? {
        try read { try StoreGrowthRecord.fetchOne($0, key: snapshotID) }
    }

    /// Every unfinished growth, oldest first.
    public func storeGrowths() throws -> [StoreGrowthRecord] {
        try read { try StoreGrowthRecord.order(Column("startedAt")).fetchAll($0) }
    }

    /// Records that the snapshot's store now has `sizeBytes` and forgets the growth, in one
    /// transaction.
    ///
    /// - Returns: false, changing nothing, when the snapshot no longer exists.
    @discardableResult
    public func finishStoreGrowth(snapshotID: String, sizeBytes: Int64) throws -> Bool {
        try write { db in
            guard var snapshot = try SnapshotRecord.fetchOne(db, key: snapshotID) else { return false }
            snapshot.storeSizeBytes = sizeBytes
            try snapshot.update(db)
            try StoreGrowthRecord.deleteOne(db, key: snapshotID)
            return true
        }
    }

    /// Forgets a growth that did not happen (undone before the store changed).
    @discardableResult
    public func abandonStoreGrowth(snapshotID: String) throws -> Bool {
        try write { try StoreGrowthRecord.deleteOne($0, key: snapshotID) }
    }
}
