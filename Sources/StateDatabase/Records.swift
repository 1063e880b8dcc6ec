import Foundation
import GRDB

// MARK: - States

/// Where a device is in its protection life cycle.
public enum DeviceState: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    /// The origin stack is being set up; it may be half built after a crash.
    case protecting
    /// The origin stack is in place and snapshots can be taken.
    case protected
    /// The origin stack is being taken down; it may be half gone after a crash.
    case unprotecting
    /// Recorded by `protect --at-boot` while something used the device: its stack is built at
    /// the next boot, before anything mounts it (reconcile, run by the daemon at start).
    case pending
}

/// Where a snapshot set is in its creation.
public enum SnapshotSetState: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    /// Devices are being frozen and their snapshots made.
    case creating
    /// Every snapshot of the set was taken at the same frozen instant.
    case complete
}

/// Where a snapshot is in its life cycle.
public enum SnapshotState: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    /// The exception store is being prepared or the snapshot target loaded.
    case creating
    /// The snapshot is live and readable.
    case active
    /// A merge back into the origin was asked for and waits for its turn.
    case mergePending
    /// The kernel is merging the snapshot back into the origin.
    case merging
    /// The snapshot is being torn down and its store released.
    case dropping
    /// The kernel invalidated the snapshot, typically because its store overflowed.
    case invalid
}

/// What holds a snapshot's exception store.
public enum StoreKind: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    /// A file, attached through a loop device.
    case file
    /// A block device given over to the store.
    case device
    /// An LVM logical volume snapstack made for it (`storePath` is `vg/lv`).
    case volume
}

// MARK: - Identifiers and dates

/// A short random identifier: 8 lowercase hexadecimal digits.
///
/// Short, so that it fits in device-mapper names and reads well in reports;
/// random rather than sequential, so that an id is never reused after a
/// database is rebuilt and cannot be confused with a former device's.
func shortRandomID() -> String {
    var generator = SystemRandomNumberGenerator()
    let digits = String(UInt32.random(in: .min ... .max, using: &generator), radix: 16)
    return String(repeating: "0", count: 8 - digits.count) + digits
}

extension Date {
    /// This date as it reads back from the database.
    ///
    /// GRDB stores dates as UTC text to the millisecond, which keeps them
    /// legible in the `sqlite3` shell. Records round their dates the same way
    /// when they are made, so a record compares equal to itself read back.
    var storedPrecision: Date {
        Date.fromDatabaseValue(databaseValue) ?? self
    }
}

// MARK: - Records

/// A block device that snapstack protects (table `device`).
public struct DeviceRecord: Codable, Sendable, Equatable, Hashable, Identifiable,
    FetchableRecord, PersistableRecord
{
    public static let databaseTableName = "device"

    /// A short stable id (see ``newID()``), used in device-mapper names.
    public var id: String
    /// The name the operator gave the device; unique among devices.
    public var name: String
    public var state: DeviceState
    /// The path the device was named by when protected, e.g. `/dev/sdb1`.
    public var sourcePath: String
    public var sourceMajor: Int
    public var sourceMinor: Int
    public var sizeBytes: Int64
    /// Identity facts from udev, used to find the device again if its
    /// number or path changes across reboots.
    public var wwn: String?
    public var serial: String?
    public var partUUID: String?
    public var fsUUID: String?
    /// The changed-block tracking granularity, in 512-byte sectors;
    /// nil when changed blocks are not tracked.
    public var cbtBlockSectors: Int?
    /// The path of the dm-era metadata, when changed blocks are tracked.
    public var eraMetadataPath: String?
    /// Kept to the millisecond, as the database stores it.
    public var createdAt: Date
    /// For a live device-mapper device adopted online (an LVM volume): its dm name, which keeps
    /// playing the top's role, and its dm UUID; nil for a disk wrapped in a stack of our own.
    public var adoptedName: String?
    public var adoptedUUID: String?
    /// The table the adopted device had before it mapped through the stack, as `dmsetup table`
    /// prints it: what its clone layer carries, and what `unprotect` loads back.
    public var adoptedTable: String?
    /// Set when change tracking could not be kept continuous (a foreign reload of an adopted
    /// device, a stack rebuilt after a reboot): writes may have gone unrecorded before era
    /// `trackingInterruptedEra`, so no incremental may start from an earlier era.
    public var trackingInterruptedEra: Int64?
    public var trackingInterruptedAt: Date?
    public var trackingInterruptedReason: String?
    /// What the filesystem on its disk showed (a `FilesystemStamp`, rendered) when snapstack's
    /// daemon last stopped with this device's stack whole and its top unused, and when. A
    /// rebuild of the stack keeps the change tracking only if the disk still shows this stamp:
    /// then nothing mounted and wrote the filesystem while it had no stack. The rebuild
    /// consumes it.
    public var cleanStopStamp: String?
    public var cleanStopAt: Date?

    /// Makes a record; `createdAt` is rounded to what the database keeps.
    public init(
        id: String = DeviceRecord.newID(),
        name: String,
        state: DeviceState,
        sourcePath: String,
        sourceMajor: Int,
        sourceMinor: Int,
        sizeBytes: Int64,
        wwn: String? = nil,
        serial: String? = nil,
        partUUID: String? = nil,
        fsUUID: String? = nil,
        cbtBlockSectors: Int? = nil,
        eraMetadataPath: String? = nil,
        createdAt: Date = Date(),
        adoptedName: String? = nil,
        adoptedUUID: String? = nil,
        adoptedTable: String? = nil
    ) {
        self.id = id
        self.name = name
        self.state = state
        self.sourcePath = sourcePath
        self.sourceMajor = sourceMajor
        self.sourceMinor = sourceMinor
        self.sizeBytes = sizeBytes
        self.wwn = wwn
        self.serial = serial
        self.partUUID = partUUID
        self.fsUUID = fsUUID
        self.cbtBlockSectors = cbtBlockSectors
        self.eraMetadataPath = eraMetadataPath
        self.createdAt = createdAt.storedPrecision
        self.adoptedName = adoptedName
        self.adoptedUUID = adoptedUUID
        self.adoptedTable = adoptedTable
    }

    /// A fresh random id of 8 lowercase hexadecimal digits.
    public static func newID() -> String { shortRandomID() }
}

/// Snapshots taken together at one frozen instant (table `snapshotSet`).
public struct SnapshotSetRecord: Codable, Sendable, Equatable, Hashable,
    FetchableRecord, MutablePersistableRecord
{
    public static let databaseTableName = "snapshotSet"

    /// Assigned by the database on insertion and never reused.
    public var id: Int64?
    /// Kept to the millisecond, as the database stores it.
    public var createdAt: Date
    public var state: SnapshotSetState
    /// How long the filesystems were frozen, once known.
    public var freezeMicroseconds: Int64?

    /// Makes a record; `createdAt` is rounded to what the database keeps.
    public init(
        id: Int64? = nil,
        createdAt: Date = Date(),
        state: SnapshotSetState,
        freezeMicroseconds: Int64? = nil
    ) {
        self.id = id
        self.createdAt = createdAt.storedPrecision
        self.state = state
        self.freezeMicroseconds = freezeMicroseconds
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

/// One device's snapshot, member of a set (table `snapshot`).
public struct SnapshotRecord: Codable, Sendable, Equatable, Hashable, Identifiable,
    FetchableRecord, PersistableRecord
{
    public static let databaseTableName = "snapshot"

    /// A short stable id (see ``newID()``), used in device-mapper names.
    public var id: String
    public var setID: Int64
    public var deviceID: String
    /// Unique among the snapshots of one device.
    public var name: String
    public var state: SnapshotState
    public var storeKind: StoreKind
    /// The exception store's file or device path.
    public var storePath: String
    public var storeSizeBytes: Int64
    /// The snapshot's chunk size, in 512-byte sectors.
    public var chunkSectors: Int
    /// The device's era at the snapshot point; nil without changed-block tracking.
    public var era: Int64?
    /// Kept to the millisecond, as the database stores it.
    public var createdAt: Date
    /// Whether the snapshot device takes writes (`--writable`); read-only otherwise, since a
    /// write to a snapshot passes no era layer and an incremental built on it would miss it.
    public var writable: Bool

    /// Makes a record; `createdAt` is rounded to what the database keeps.
    public init(
        id: String = SnapshotRecord.newID(),
        setID: Int64,
        deviceID: String,
        name: String,
        state: SnapshotState,
        storeKind: StoreKind,
        storePath: String,
        storeSizeBytes: Int64,
        chunkSectors: Int,
        era: Int64? = nil,
        createdAt: Date = Date(),
        writable: Bool = false
    ) {
        self.id = id
        self.writable = writable
        self.setID = setID
        self.deviceID = deviceID
        self.name = name
        self.state = state
        self.storeKind = storeKind
        self.storePath = storePath
        self.storeSizeBytes = storeSizeBytes
        self.chunkSectors = chunkSectors
        self.era = era
        self.createdAt = createdAt.storedPrecision
    }

    /// A fresh random id of 8 lowercase hexadecimal digits.
    public static func newID() -> String { shortRandomID() }
}

/// A line of snapstack's history (table `event`).
public struct EventRecord: Codable, Sendable, Equatable, Hashable,
    FetchableRecord, MutablePersistableRecord
{
    public static let databaseTableName = "event"

    /// Assigned by the database on insertion; orders events even when the
    /// clock steps backwards.
    public var id: Int64?
    /// Kept to the millisecond, as the database stores it.
    public var time: Date
    /// What happened, e.g. "protect", "snapshot", "reconcile", "overflow".
    public var kind: String
    /// The device or snapshot it happened to.
    public var subject: String
    public var message: String

    /// Makes a record; `time` is rounded to what the database keeps.
    public init(id: Int64? = nil, time: Date = Date(), kind: String, subject: String, message: String) {
        self.id = id
        self.time = time.storedPrecision
        self.kind = kind
        self.subject = subject
        self.message = message
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}
