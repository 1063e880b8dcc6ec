import BlockIO

/// The status of a `snapshot` or `snapshot-merge` target (`snapshot_status`, STATUSTYPE_INFO).
public enum SnapshotStatus: Hashable, Sendable {
    /// `<sectors allocated>/<total sectors> <metadata sectors>`: COW space in use, the COW
    /// device's size, and how much of the allocation is the store's own metadata.
    case active(allocated: Sectors, total: Sectors, metadata: Sectors)
    /// `Invalid`: the snapshot was dropped by the kernel (an I/O error or, without `PO`, a full store).
    case invalid
    /// `Overflow`: a `PO` snapshot ran out of COW space; its content is no longer complete.
    case overflow
    /// `Merge failed`: a merge stopped on an error and will not resume by itself.
    case mergeFailed
    /// `Unknown`: the store could not report its usage.
    case unknown

    public init(parsing text: String) throws(TableError) {
        let trimmed = text.trimmingSpaces
        switch trimmed {
        case "Invalid": self = .invalid
        case "Overflow": self = .overflow
        case "Merge failed": self = .mergeFailed
        case "Unknown": self = .unknown
        default:
            let fields = trimmed.split(separator: " ")
            let usage = fields.first?.split(separator: "/") ?? []
            guard fields.count == 2, usage.count == 2,
                  let allocated = UInt64(decimal: usage[0]), let total = UInt64(decimal: usage[1]), let metadata = UInt64(decimal: fields[1]),
                  allocated <= total, metadata <= allocated
            else { throw TableError.malformed(text, reason: "not a snapshot status") }
            self = .active(allocated: Sectors(allocated), total: Sectors(total), metadata: Sectors(metadata))
        }
    }

    /// Per cent of the COW device in use, as `lvs` shows `Data%`; nil unless active.
    public var usedPercent: Double? {
        guard case .active(let allocated, let total, _) = self, total > .zero else { return nil }
        return Double(allocated.rawValue) * 100 / Double(total.rawValue)
    }

    /// For a merging snapshot: every chunk has been copied back once only the store's metadata
    /// remains allocated (the test lvm2 applies in `_snap_merge_percent`).
    public var isMergeComplete: Bool {
        if case .active(let allocated, _, let metadata) = self { return allocated == metadata }
        return false
    }
}

/// The status of an `era` target (`era_status`):
/// `<metadata block size> <used>/<total metadata blocks> <current era> <held metadata root|->`.
public struct EraStatus: Hashable, Sendable {
    public var metadataBlockSize: Sectors
    public var usedMetadataBlocks: UInt64
    public var totalMetadataBlocks: UInt64
    public var currentEra: UInt32
    /// The block of the metadata snapshot taken with `take_metadata_snap`, nil when none is held.
    public var heldMetadataRoot: UInt64?

    public init(metadataBlockSize: Sectors, usedMetadataBlocks: UInt64, totalMetadataBlocks: UInt64,
                currentEra: UInt32, heldMetadataRoot: UInt64?) {
        self.metadataBlockSize = metadataBlockSize
        self.usedMetadataBlocks = usedMetadataBlocks
        self.totalMetadataBlocks = totalMetadataBlocks
        self.currentEra = currentEra
        self.heldMetadataRoot = heldMetadataRoot
    }

    public init(parsing text: String) throws(TableError) {
        let fields = text.trimmingSpaces.split(separator: " ")
        let usage = fields.count == 4 ? fields[1].split(separator: "/") : []
        guard fields.count == 4, usage.count == 2,
              let blockSize = UInt64(decimal: fields[0]), let used = UInt64(decimal: usage[0]), let total = UInt64(decimal: usage[1]),
              used <= total, let era = UInt64(decimal: fields[2]).flatMap(UInt32.init(exactly:))
        else { throw TableError.malformed(text, reason: "not an era status") }
        var held: UInt64? = nil
        if fields[3] != "-" {
            guard let root = UInt64(decimal: fields[3]) else {
                throw TableError.malformed(text, reason: "held metadata root is neither a block nor -")
            }
            held = root
        }
        self.init(metadataBlockSize: Sectors(blockSize), usedMetadataBlocks: used, totalMetadataBlocks: total,
                  currentEra: era, heldMetadataRoot: held)
    }
}

/// The status of one table line, by target type.
public enum TargetStatus: Hashable, Sendable {
    case snapshot(SnapshotStatus)
    case snapshotMerge(SnapshotStatus)
    case era(EraStatus)
    /// Targets whose status line is empty: `linear`, `snapshot-origin`, `zero`, `error`.
    case empty(type: String)
    /// A target that reports `Error` instead of its status. dm-era reads its status in its
    /// worker, which commits the metadata after every such call: `Error` when that commit (or
    /// the read) fails, i.e. its metadata device fails writes. Such an era fails every write
    /// to a block it has not marked yet.
    case failed(type: String)
    case unmodelled(type: String, text: String)

    public init(type: String, text: String) throws(TableError) {
        if type == Era.targetType, text.trimmingSpaces == "Error" {
            self = .failed(type: type)
            return
        }
        switch type {
        case Snapshot.targetType: self = .snapshot(try SnapshotStatus(parsing: text))
        case SnapshotMerge.targetType: self = .snapshotMerge(try SnapshotStatus(parsing: text))
        case Era.targetType: self = .era(try EraStatus(parsing: text))
        case Linear.targetType, SnapshotOrigin.targetType, Zero.targetType, ErrorTarget.targetType:
            guard text.trimmingSpaces.isEmpty else {
                throw TableError.malformed(text, reason: "\(type) reports no status")
            }
            self = .empty(type: type)
        default: self = .unmodelled(type: type, text: text)
        }
    }
}

/// One line of `dmsetup status`.
public struct StatusLine: Hashable, Sendable {
    public var start: Sectors
    public var length: Sectors
    public var status: TargetStatus

    public init(start: Sectors, length: Sectors, status: TargetStatus) {
        self.start = start
        self.length = length
        self.status = status
    }

    /// Parses one line as `dmsetup status` prints it.
    public init(parsing line: some StringProtocol) throws(TableError) {
        let fields = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: true)
        guard fields.count >= 3, let start = UInt64(decimal: fields[0]), let length = UInt64(decimal: fields[1]) else {
            throw TableError.malformed(String(line), reason: "expected <start> <length> <type> [<status>]")
        }
        self.init(start: Sectors(start), length: Sectors(length),
                  status: try TargetStatus(type: String(fields[2]), text: fields.count == 4 ? String(fields[3]) : ""))
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " || $0 == "\n" }).reversed().drop(while: { $0 == " " || $0 == "\n" }).reversed())
    }
}
