import Foundation
import GRDB

/// snapstack's persistent metadata: devices, snapshot sets, snapshots and
/// events, in `<state directory>/snapstack.db`.
///
/// One connection per process; writers in different processes are kept apart
/// by snapstack's lock file, and SQLite's own locking covers readers. The
/// database runs in WAL mode with `synchronous = FULL`, so a transaction that
/// returned is on disk: the kernel state it describes may already exist, and
/// after a power cut the record of it must too.
public final class StateDatabase: Sendable {
    /// The database's file name inside the state directory.
    public static let fileName = "snapstack.db"

    /// The database file's path.
    public let path: String
    /// True for a database opened with ``open(readOnly:)``; writes then fail
    /// with ``StateDatabaseError/io(path:reason:)``.
    public let isReadOnly: Bool

    private let queue: DatabaseQueue

    private init(queue: DatabaseQueue, path: String, isReadOnly: Bool) {
        self.queue = queue
        self.path = path
        self.isReadOnly = isReadOnly
    }

    /// The database path for a state directory.
    public static func databasePath(in directory: String) -> String {
        URL(fileURLWithPath: directory).appendingPathComponent(fileName).path
    }

    /// Opens the database in `directory`, creating the directory (mode 0700)
    /// and the database as needed, and brings its schema up to date.
    ///
    /// - Throws: ``StateDatabaseError/newerSchema(path:unknown:)`` if a newer
    ///   snapstack wrote the database, which is then left unchanged;
    ///   ``StateDatabaseError/corrupt(path:reason:)`` if the file is not a sound
    ///   database; ``StateDatabaseError/io(path:reason:)`` if the directory or file
    ///   cannot be created or opened.
    public convenience init(directory: String) throws {
        try StateDatabase.makeDirectory(directory)
        let path = StateDatabase.databasePath(in: directory)
        let queue: DatabaseQueue
        do {
            queue = try StateDatabase.openQueue(path: path, readOnly: false)
            // Before anything that could write: a newer build's database
            // must come through this untouched.
            let unknown = try queue.read(Schema.unknownMigrations)
            guard unknown.isEmpty else {
                throw StateDatabaseError.newerSchema(path: path, unknown: unknown)
            }
            // Not GRDB's `journalMode = .wal`: that also lowers
            // `synchronous` to NORMAL and writes a dummy transaction on open.
            try queue.writeWithoutTransaction { db in
                let mode = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
                guard mode?.lowercased() == "wal" else {
                    throw StateDatabaseError.io(
                        path: path,
                        reason: "SQLite would not switch the database to WAL journal mode "
                            + "(it stayed in \(mode ?? "an unknown mode"))")
                }
            }
            try Schema.migrator.migrate(queue)
        } catch {
            throw StateDatabase.translate(error, path: path)
        }
        self.init(queue: queue, path: path, isReadOnly: false)
    }

    /// Opens the database in `directory` for reading, for reports that must
    /// not create state.
    ///
    /// Returns nil, creating nothing, when the directory or the database does
    /// not exist yet. A database whose schema is older than this build is
    /// upgraded first, as ``init(directory:)`` would, since its tables could
    /// not otherwise be read; the database returned is read-only all the same.
    ///
    /// With `upgrading` false, a database whose schema is older is left alone and nil is
    /// returned instead, for readers that must never write (shell completion).
    ///
    /// - Throws: the same errors as ``init(directory:)``.
    public static func open(readOnly directory: String, upgrading: Bool = true) throws -> StateDatabase? {
        let path = databasePath(in: directory)
        guard FileManager.default.fileExists(atPath: path) else {
            return nil
        }
        if let database = try openCurrentReadOnly(path: path) {
            return database
        }
        guard upgrading else { return nil }
        do {
            _ = try StateDatabase(directory: directory)
        } catch {
            // Another snapstack may have upgraded it at the same moment,
            // making our own attempt fail; its result is as good as ours.
            guard let database = try? openCurrentReadOnly(path: path) else {
                throw error
            }
            return database
        }
        guard let database = try openCurrentReadOnly(path: path) else {
            throw StateDatabaseError.io(
                path: path, reason: "its schema was upgraded but still reads as out of date")
        }
        return database
    }

    /// A read-only database if the schema is current, nil if it is older.
    private static func openCurrentReadOnly(path: String) throws -> StateDatabase? {
        do {
            let queue = try openQueue(path: path, readOnly: true)
            let (unknown, current) = try queue.read { db in
                (try Schema.unknownMigrations(db), try Schema.migrator.hasCompletedMigrations(db))
            }
            guard unknown.isEmpty else {
                throw StateDatabaseError.newerSchema(path: path, unknown: unknown)
            }
            return current ? StateDatabase(queue: queue, path: path, isReadOnly: true) : nil
        } catch {
            throw translate(error, path: path)
        }
    }

    private static func openQueue(path: String, readOnly: Bool) throws -> DatabaseQueue {
        var configuration = Configuration()
        configuration.label = "snapstack.state"
        configuration.readonly = readOnly
        configuration.foreignKeysEnabled = true
        // A report reading while a command commits should wait, not fail.
        configuration.busyMode = .timeout(10)
        configuration.prepareDatabase { db in
            // Per connection, not stored in the file: set on every open.
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        return try DatabaseQueue(path: path, configuration: configuration)
    }

    private static func makeDirectory(_ directory: String) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw StateDatabaseError.io(path: directory, reason: "it exists and is not a directory")
            }
            return
        }
        do {
            // 0700: snapshot names and store paths are for root's eyes.
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700])
        } catch {
            throw StateDatabaseError.io(
                path: directory,
                reason: "cannot create the directory (\(error.localizedDescription))")
        }
    }

    /// Turns SQLite's failures into the errors an operator can act on.
    private static func translate(_ error: any Error, path: String) -> any Error {
        guard let error = error as? DatabaseError else {
            return error
        }
        var reason = error.message ?? error.resultCode.description
        // "disk I/O error" covers a dozen failures; SQLite's extended code names which
        // (https://sqlite.org/rescode.html), for the operator's report.
        if error.extendedResultCode != error.resultCode {
            reason += " (SQLite extended code \(error.extendedResultCode.rawValue))"
        }
        switch error.resultCode {
        case .SQLITE_CORRUPT, .SQLITE_NOTADB:
            return StateDatabaseError.corrupt(path: path, reason: reason)
        case .SQLITE_CANTOPEN, .SQLITE_IOERR, .SQLITE_FULL, .SQLITE_PERM,
            .SQLITE_READONLY, .SQLITE_NOLFS:
            // A full file system reaches SQLite as whichever of its writes came first: growing
            // the shared-memory index is "disk I/O error (4874)", not "database or disk is
            // full". What the file system says settles it.
            if error.resultCode != .SQLITE_PERM && error.resultCode != .SQLITE_READONLY,
               let free = freeBytes(near: path), free < lowSpace {
                reason += "; No space left on device: the file system holding it has \(free) bytes free"
            }
            return StateDatabaseError.io(path: path, reason: reason)
        default:
            return error
        }
    }

    /// Below this, a write of SQLite's (a page, its journal, its shared-memory index) may not fit.
    private static let lowSpace: UInt64 = 1 << 20

    /// The bytes root may still write on the file system that holds `path` (or its directory).
    private static func freeBytes(near path: String) -> UInt64? {
        var info = statvfs()
        let directory = (path as NSString).deletingLastPathComponent
        guard statvfs(path, &info) == 0 || statvfs(directory, &info) == 0 else { return nil }
        let (bytes, overflow) = UInt64(info.f_bfree).multipliedReportingOverflow(by: UInt64(info.f_frsize))
        return overflow ? .max : bytes
    }

    /// Runs `body` and reports a UNIQUE violation as a clash of `name`, the
    /// only unique value the tables have besides their primary keys.
    private static func naming<T>(_ name: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
            throw StateDatabaseError.duplicateName(name)
        }
    }

    // MARK: - Transactions

    /// Runs `body` in one write transaction; if it throws, nothing it did is
    /// kept and the error is rethrown.
    public func write<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            return try queue.write(body)
        } catch {
            throw StateDatabase.translate(error, path: path)
        }
    }

    /// Runs `body` against one consistent view of the database.
    public func read<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            return try queue.read(body)
        } catch {
            throw StateDatabase.translate(error, path: path)
        }
    }

    // MARK: - Devices

    /// All devices, ordered by name.
    public func devices() throws -> [DeviceRecord] {
        try read { try DeviceRecord.order(Column("name")).fetchAll($0) }
    }

    /// The device with this name, if any.
    public func device(named name: String) throws -> DeviceRecord? {
        try read { try DeviceRecord.filter(Column("name") == name).fetchOne($0) }
    }

    /// The device with this id, if any.
    public func device(id: String) throws -> DeviceRecord? {
        try read { try DeviceRecord.fetchOne($0, key: id) }
    }

    /// Adds a device.
    ///
    /// - Throws: ``StateDatabaseError/duplicateName(_:)`` if a device has its name.
    public func insert(_ device: DeviceRecord) throws {
        try write { db in try StateDatabase.naming(device.name) { try device.insert(db) } }
    }

    /// Replaces the stored device that has this record's id.
    ///
    /// - Throws: ``StateDatabaseError/duplicateName(_:)`` if it was renamed to
    ///   another device's name; GRDB's `RecordError.recordNotFound` if no
    ///   device has its id.
    public func update(_ device: DeviceRecord) throws {
        try write { db in try StateDatabase.naming(device.name) { try device.update(db) } }
    }

    /// Deletes a device with its snapshots, and the sets left without any.
    ///
    /// - Returns: whether the device existed.
    @discardableResult
    public func deleteDevice(id: String) throws -> Bool {
        try write { try DeviceRecord.deleteOne($0, key: id) }
    }

    // MARK: - Snapshot sets

    /// Adds a set and returns it with the id the database gave it.
    public func insertSet(_ set: SnapshotSetRecord) throws -> SnapshotSetRecord {
        try write { try set.inserted($0) }
    }

    /// Replaces the stored set that has this record's id.
    ///
    /// - Throws: GRDB's `RecordError.recordNotFound` if no set has its id.
    public func updateSet(_ set: SnapshotSetRecord) throws {
        try write { try set.update($0) }
    }

    /// The set with this id, if any.
    public func set(id: Int64) throws -> SnapshotSetRecord? {
        try read { try SnapshotSetRecord.fetchOne($0, key: id) }
    }

    /// All sets, oldest first.
    public func sets() throws -> [SnapshotSetRecord] {
        try read { try SnapshotSetRecord.order(Column("id")).fetchAll($0) }
    }

    /// Deletes a set with all its snapshots.
    ///
    /// - Returns: whether the set existed.
    @discardableResult
    public func deleteSet(id: Int64) throws -> Bool {
        try write { try SnapshotSetRecord.deleteOne($0, key: id) }
    }

    // MARK: - Snapshots

    /// The snapshots of one device, or of all devices when `deviceID` is nil,
    /// ordered by creation time, then name.
    public func snapshots(deviceID: String? = nil) throws -> [SnapshotRecord] {
        try read { db in
            var request = SnapshotRecord.all()
            if let deviceID {
                request = request.filter(Column("deviceID") == deviceID)
            }
            return try request.order(Column("createdAt"), Column("name")).fetchAll(db)
        }
    }

    /// The snapshots of one set, ordered by creation time, then name.
    public func snapshots(setID: Int64) throws -> [SnapshotRecord] {
        try read { db in
            try SnapshotRecord
                .filter(Column("setID") == setID)
                .order(Column("createdAt"), Column("name"))
                .fetchAll(db)
        }
    }

    /// The snapshot with this id, if any.
    public func snapshot(id: String) throws -> SnapshotRecord? {
        try read { try SnapshotRecord.fetchOne($0, key: id) }
    }

    /// The snapshot of a device with this name, if any.
    public func snapshot(deviceID: String, name: String) throws -> SnapshotRecord? {
        try read { db in
            try SnapshotRecord
                .filter(Column("deviceID") == deviceID && Column("name") == name)
                .fetchOne(db)
        }
    }

    /// Adds a snapshot; its set and device must exist.
    ///
    /// - Throws: ``StateDatabaseError/duplicateName(_:)`` if the device already has a
    ///   snapshot of this name.
    public func insert(_ snapshot: SnapshotRecord) throws {
        try write { db in try StateDatabase.naming(snapshot.name) { try snapshot.insert(db) } }
    }

    /// Replaces the stored snapshot that has this record's id.
    ///
    /// - Throws: ``StateDatabaseError/duplicateName(_:)`` if it was renamed to the
    ///   name of another snapshot of its device; GRDB's
    ///   `RecordError.recordNotFound` if no snapshot has its id.
    public func update(_ snapshot: SnapshotRecord) throws {
        try write { db in try StateDatabase.naming(snapshot.name) { try snapshot.update(db) } }
    }

    /// Deletes a snapshot, and its set too if it was the set's last.
    ///
    /// - Returns: whether the snapshot existed.
    @discardableResult
    public func deleteSnapshot(id: String) throws -> Bool {
        try write { try SnapshotRecord.deleteOne($0, key: id) }
    }

    // MARK: - Events

    /// Appends a line to the history, stamped with the current time.
    /// How many events the log keeps: the newest; older ones are deleted as new ones come, so
    /// that a daemon running for years (a store watch, hotplug) does not grow the state without
    /// end. Their count by kind is kept (`eventCount(kind:)`).
    public static let eventsKept: Int64 = 10_000

    public func record(event kind: String, subject: String, message: String, keeping kept: Int64 = StateDatabase.eventsKept) throws {
        try write { db in
            var event = EventRecord(kind: kind, subject: subject, message: message)
            try event.insert(db)
            try db.execute(sql: "INSERT INTO eventCount (kind, total) VALUES (?, 1) ON CONFLICT(kind) DO UPDATE SET total = total + 1",
                           arguments: [kind])
            if let id = event.id, id > kept {
                try db.execute(sql: "DELETE FROM event WHERE id <= ?", arguments: [id - kept])
            }
        }
    }

    /// The latest events, newest first.
    public func events(limit: Int = 100) throws -> [EventRecord] {
        try read { try EventRecord.order(Column("id").desc).limit(limit).fetchAll($0) }
    }
}
