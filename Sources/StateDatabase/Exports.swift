import Foundation
import GRDB

/// Where an export is in its life.
public enum ExportState: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    /// Blocks are being copied; after a crash the image is incomplete and running the same
    /// export again finishes it.
    case running
    /// Every block was copied and the image's manifest says so.
    case complete
}

/// How much of the snapshot an export read.
public enum ExportKind: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    /// Every block of the snapshot.
    case full
    /// Only the blocks that changed since the base export's snapshot.
    case incremental
}

/// One copy-out of a snapshot (table `export`): what was read, from which snapshot, on top of
/// which earlier export, and where it went. A later incremental names it as its base.
///
/// Exports outlive their snapshots (the snapshot is usually dropped right after the backup),
/// so the snapshot is kept by id and name rather than as a foreign key; a device that is
/// unprotected takes its exports with it, since its eras mean nothing afterwards.
public struct ExportRecord: Codable, Sendable, Equatable, Hashable, Identifiable,
    FetchableRecord, PersistableRecord
{
    public static let databaseTableName = "export"

    /// A short stable id (8 hexadecimal digits), printed by `export` and named by `--since`.
    public var id: String
    public var deviceID: String
    public var snapshotID: String
    public var snapshotName: String
    public var kind: ExportKind
    public var state: ExportState
    /// The export this one was applied on top of (incrementals only).
    public var baseExportID: String?
    /// The snapshot's era: an incremental based on this export reads blocks written in this era
    /// or later. Nil for a device without changed-block tracking.
    public var era: Int64?
    /// The first era whose writes an incremental read (the base's `era`).
    public var sinceEra: Int64?
    /// The block size of the image's checksums, which is the tracking block size.
    public var blockSizeBytes: Int64
    public var deviceSizeBytes: Int64
    /// The image file, or nil for a stream written to standard output.
    public var imagePath: String?
    /// `raw`, `image` or `delta`: what the bytes written look like.
    public var format: String
    public var bytesRead: Int64
    public var bytesWritten: Int64
    public var createdAt: Date
    public var completedAt: Date?

    public init(
        id: String = ExportRecord.newID(), deviceID: String, snapshotID: String, snapshotName: String,
        kind: ExportKind, state: ExportState = .running, baseExportID: String? = nil,
        era: Int64?, sinceEra: Int64? = nil, blockSizeBytes: Int64, deviceSizeBytes: Int64,
        imagePath: String?, format: String, bytesRead: Int64 = 0, bytesWritten: Int64 = 0,
        createdAt: Date = Date(), completedAt: Date? = nil
    ) {
        self.id = id
        self.deviceID = deviceID
        self.snapshotID = snapshotID
        self.snapshotName = snapshotName
        self.kind = kind
        self.state = state
        self.baseExportID = baseExportID
        self.era = era
        self.sinceEra = sinceEra
        self.blockSizeBytes = blockSizeBytes
        self.deviceSizeBytes = deviceSizeBytes
        self.imagePath = imagePath
        self.format = format
        self.bytesRead = bytesRead
        self.bytesWritten = bytesWritten
        self.createdAt = createdAt.storedPrecision
        self.completedAt = completedAt?.storedPrecision
    }

    /// A fresh random id of 8 lowercase hexadecimal digits.
    public static func newID() -> String { shortRandomID() }
}

extension StateDatabase {
    /// Exports of one device, or of all devices, oldest first.
    public func exports(deviceID: String? = nil) throws -> [ExportRecord] {
        try read { db in
            var request = ExportRecord.all()
            if let deviceID { request = request.filter(Column("deviceID") == deviceID) }
            return try request.order(Column("createdAt"), Column("id")).fetchAll(db)
        }
    }

    /// The export with this id, if any.
    public func export(id: String) throws -> ExportRecord? {
        try read { try ExportRecord.fetchOne($0, key: id) }
    }

    /// Adds an export, or replaces the stored one with the same id.
    public func save(_ export: ExportRecord) throws {
        try write { try export.save($0) }
    }

    /// Deletes an export record; the image on disk is not touched.
    @discardableResult
    public func deleteExport(id: String) throws -> Bool {
        try write { try ExportRecord.deleteOne($0, key: id) }
    }
}
