import GRDB

/// The schema, as an append-only list of named migrations.
///
/// A released migration is never edited: databases in the field have already
/// applied it. Changes go in a new migration ("v2", ...) appended below, and
/// a build that meets identifiers it does not know refuses the database
/// rather than guess at a newer layout.
enum Schema {
    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()

        migrator.registerMigration("v1") { db in
            try db.create(table: "device") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                // States are not CHECK-constrained: SQLite cannot alter a
                // CHECK in place, and adding a state later must stay cheap.
                t.column("state", .text).notNull()
                t.column("sourcePath", .text).notNull()
                t.column("sourceMajor", .integer).notNull()
                t.column("sourceMinor", .integer).notNull()
                t.column("sizeBytes", .integer).notNull()
                t.column("wwn", .text)
                t.column("serial", .text)
                t.column("partUUID", .text)
                t.column("fsUUID", .text)
                t.column("cbtBlockSectors", .integer)
                t.column("eraMetadataPath", .text)
                t.column("createdAt", .datetime).notNull()
            }

            // AUTOINCREMENT so that a set id named in old events or logs
            // never comes to mean another set.
            try db.create(table: "snapshotSet") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("createdAt", .datetime).notNull()
                t.column("state", .text).notNull()
                t.column("freezeMicroseconds", .integer)
            }

            try db.create(table: "snapshot") { t in
                t.primaryKey("id", .text)
                t.column("setID", .integer).notNull().indexed()
                    .references("snapshotSet", onDelete: .cascade)
                t.column("deviceID", .text).notNull()
                    .references("device", onDelete: .cascade)
                t.column("name", .text).notNull()
                t.column("state", .text).notNull()
                t.column("storeKind", .text).notNull()
                t.column("storePath", .text).notNull()
                t.column("storeSizeBytes", .integer).notNull()
                t.column("chunkSectors", .integer).notNull()
                t.column("era", .integer)
                t.column("createdAt", .datetime).notNull()
                // Also serves as the index for lookups by device.
                t.uniqueKey(["deviceID", "name"])
            }

            // A set only means something through its snapshots. Doing this
            // in SQL covers every way a snapshot goes away, including the
            // cascade from a deleted device and deletions made inside
            // `StateDatabase.write`, all within the deleting transaction.
            try db.execute(sql: """
                CREATE TRIGGER snapshot_delete_empty_set
                AFTER DELETE ON snapshot
                WHEN NOT EXISTS (SELECT 1 FROM snapshot WHERE setID = OLD.setID)
                BEGIN
                    DELETE FROM snapshotSet WHERE id = OLD.setID;
                END
                """)

            try db.create(table: "event") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("time", .datetime).notNull()
                t.column("kind", .text).notNull()
                t.column("subject", .text).notNull()
                t.column("message", .text).notNull()
            }
        }

        // Exports: the copies taken of snapshots, which incrementals name as their base.
        migrator.registerMigration("v2-exports") { db in
            try db.create(table: "export") { t in
                t.primaryKey("id", .text)
                t.column("deviceID", .text).notNull().indexed()
                    .references("device", onDelete: .cascade)
                t.column("snapshotID", .text).notNull()
                t.column("snapshotName", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("state", .text).notNull()
                t.column("baseExportID", .text)
                t.column("era", .integer)
                t.column("sinceEra", .integer)
                t.column("blockSizeBytes", .integer).notNull()
                t.column("deviceSizeBytes", .integer).notNull()
                t.column("imagePath", .text)
                t.column("format", .text).notNull()
                t.column("bytesRead", .integer).notNull()
                t.column("bytesWritten", .integer).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("completedAt", .datetime)
            }
        }

        // Growths of snapshot stores in progress (StoreGrowth.swift).
        StoreGrowthSchema.register(in: &migrator)

        // Live dm devices adopted online, and change tracking that could not be kept continuous.
        migrator.registerMigration("v3-adoption") { db in
            try db.alter(table: "device") { t in
                t.add(column: "adoptedName", .text)
                t.add(column: "adoptedUUID", .text)
                t.add(column: "adoptedTable", .text)
                t.add(column: "trackingInterruptedEra", .integer)
                t.add(column: "trackingInterruptedAt", .datetime)
                t.add(column: "trackingInterruptedReason", .text)
            }
        }

        // Snapshots are read-only unless taken --writable; the ones taken before were writable.
        migrator.registerMigration("v4-snapshot-access") { db in
            try db.alter(table: "snapshot") { t in
                t.add(column: "writable", .boolean).notNull().defaults(to: true)
            }
        }

        // The event log keeps its newest events only; how many of each kind there ever were
        // (the metrics' counters, which must never go down) is counted apart.
        migrator.registerMigration("v5-event-counts") { db in
            try db.create(table: "eventCount") { t in
                t.primaryKey("kind", .text)
                t.column("total", .integer).notNull()
            }
            try db.execute(sql: "INSERT INTO eventCount (kind, total) SELECT kind, COUNT(*) FROM event GROUP BY kind")
        }

        // What a clean stop of the daemon saw of each unused device's filesystem, for the next
        // stack build to prove that nothing wrote to the disk while it had no stack.
        migrator.registerMigration("v6-clean-stop") { db in
            try db.alter(table: "device") { t in
                t.add(column: "cleanStopStamp", .text)
                t.add(column: "cleanStopAt", .datetime)
            }
        }

        return migrator
    }()

    /// Applied migration identifiers that this build does not know, sorted.
    static func unknownMigrations(_ db: Database) throws -> [String] {
        let known = Set(migrator.migrations)
        return try migrator.appliedIdentifiers(db).filter { !known.contains($0) }.sorted()
    }
}
