import BlockIO

/// One device-mapper target's parameters: rendered into, and parsed back from, the text that
/// follows `<start> <length> <type>` on a table line. Parsing accepts what the kernel prints
/// for `STATUSTYPE_TABLE`, which names devices by `major:minor`.
public protocol TargetParameters: Hashable, Sendable {
    /// The kernel's target name (`struct target_type.name`).
    static var targetType: String { get }
    var parameters: String { get }
    init(parameters: String) throws(TableError)
    /// The devices the line names, each checked before a load.
    var devices: [DeviceReference] { get }
    /// Refuses what the kernel would refuse, before any ioctl is made.
    func validate() throws(TableError)
}

extension TargetParameters {
    public var devices: [DeviceReference] { [] }
    public func validate() throws(TableError) {}

    /// `validate()` plus a check of every device reference (a `.path` made directly, without
    /// `DeviceReference.checkedPath`, is checked here).
    func validateAll() throws(TableError) {
        for device in devices {
            if case .path(let path) = device {
                do { _ = try DeviceReference.checkedPath(path) } catch { throw TableError.identifier(error) }
            }
        }
        try validate()
    }
}

/// Splits a parameter string into its arguments and checks their number.
private func arguments(_ text: String, of type: String, count: ClosedRange<Int>) throws(TableError) -> [Substring] {
    let args = text.split(separator: " ", omittingEmptySubsequences: true)
    guard count.contains(args.count) else {
        let expected = count.lowerBound == count.upperBound ? "\(count.lowerBound)" : "\(count.lowerBound)-\(count.upperBound)"
        throw TableError.malformed(text, reason: "\(type) takes \(expected) arguments, found \(args.count)")
    }
    return args
}

private func sectors(_ token: Substring, _ what: String) throws(TableError) -> Sectors {
    guard let value = UInt64(decimal: token) else {
        throw TableError.malformed(String(token), reason: "\(what) is not a sector count")
    }
    return Sectors(value)
}

/// `linear <device> <offset>`: maps the range onto `device` starting at sector `offset`.
public struct Linear: TargetParameters {
    public static let targetType = "linear"
    public var device: DeviceReference
    public var offset: Sectors

    public init(device: DeviceReference, offset: Sectors = .zero) {
        self.device = device
        self.offset = offset
    }

    public var devices: [DeviceReference] { [device] }
    public var parameters: String { "\(device) \(offset.rawValue)" }

    public init(parameters: String) throws(TableError) {
        let args = try arguments(parameters, of: Self.targetType, count: 2...2)
        self.init(device: try DeviceReference(parsing: args[0]), offset: try sectors(args[1], "offset"))
    }
}

/// `striped <#stripes> <chunk size> (<device> <offset>){#stripes}`: spreads the range over
/// `stripes` devices in chunks of `chunkSize` (a striped LVM volume's table).
public struct Striped: TargetParameters {
    public static let targetType = "striped"
    public struct Stripe: Hashable, Sendable {
        public var device: DeviceReference
        public var offset: Sectors
        public init(device: DeviceReference, offset: Sectors) {
            self.device = device
            self.offset = offset
        }
    }
    public var chunkSize: Sectors
    public var stripes: [Stripe]

    public init(chunkSize: Sectors, stripes: [Stripe]) {
        self.chunkSize = chunkSize
        self.stripes = stripes
    }

    public var devices: [DeviceReference] { stripes.map(\.device) }
    public var parameters: String {
        (["\(stripes.count)", "\(chunkSize.rawValue)"] + stripes.map { "\($0.device) \($0.offset.rawValue)" }).joined(separator: " ")
    }

    public init(parameters: String) throws(TableError) {
        let args = parameters.split(separator: " ", omittingEmptySubsequences: true)
        // Counted before anything is allocated from it: a hostile count must not size an array.
        guard args.count >= 4, let stripeCount = UInt64(decimal: args[0]), stripeCount >= 1,
              stripeCount == UInt64(args.count - 2) / 2, args.count % 2 == 0 else {
            throw TableError.malformed(parameters, reason: "striped takes <#stripes> <chunk size> and a device and offset per stripe")
        }
        var stripes: [Stripe] = []
        for index in 0..<Int(stripeCount) {
            stripes.append(Stripe(device: try DeviceReference(parsing: args[2 + 2 * index]),
                                  offset: try sectors(args[3 + 2 * index], "offset")))
        }
        self.init(chunkSize: try sectors(args[1], "chunk size"), stripes: stripes)
    }

    public func validate() throws(TableError) {
        // dm-stripe refuses a chunk that is not a power of two of at least one page.
        guard chunkSize.rawValue >= 8, chunkSize.rawValue & (chunkSize.rawValue - 1) == 0 else {
            throw TableError.invalidParameter(target: Self.targetType, reason: "chunk size \(chunkSize.rawValue) is not a power of two of at least 8 sectors")
        }
    }
}

/// `era <metadata dev> <origin dev> <block size>`: passes I/O to the origin and records, per
/// block, the era in which it was last written (Documentation/admin-guide/device-mapper/era.rst).
public struct Era: TargetParameters {
    public static let targetType = "era"
    public var metadata: DeviceReference
    public var origin: DeviceReference
    /// The tracking granularity.
    public var blockSize: Sectors

    public init(metadata: DeviceReference, origin: DeviceReference, blockSize: Sectors) {
        self.metadata = metadata
        self.origin = origin
        self.blockSize = blockSize
    }

    public var devices: [DeviceReference] { [metadata, origin] }
    public var parameters: String { "\(metadata) \(origin) \(blockSize.rawValue)" }

    public init(parameters: String) throws(TableError) {
        let args = try arguments(parameters, of: Self.targetType, count: 3...3)
        self.init(metadata: try DeviceReference(parsing: args[0]), origin: try DeviceReference(parsing: args[1]),
                  blockSize: try sectors(args[2], "block size"))
    }

    public func validate() throws(TableError) {
        // dm-era keeps the block size in 32 bits; current kernels refuse anything that is not
        // a whole number of 4 KiB pages (`MIN_BLOCK_SIZE`), older ones accept it but track
        // partial pages badly, so the stricter rule holds everywhere.
        guard blockSize.rawValue > 0, blockSize.rawValue % 8 == 0, blockSize.rawValue <= UInt64(UInt32.max) else {
            throw TableError.invalidParameter(
                target: Self.targetType, reason: "block size \(blockSize.rawValue) is not a multiple of 8 sectors (4 KiB) below 2^32")
        }
    }
}

/// `snapshot-origin <origin dev>`: the device a filesystem uses while snapshots exist; every
/// first write to a chunk copies the old data to each snapshot's COW store first.
public struct SnapshotOrigin: TargetParameters {
    public static let targetType = "snapshot-origin"
    public var origin: DeviceReference

    public init(origin: DeviceReference) { self.origin = origin }

    public var devices: [DeviceReference] { [origin] }
    public var parameters: String { origin.description }

    public init(parameters: String) throws(TableError) {
        let args = try arguments(parameters, of: Self.targetType, count: 1...1)
        self.init(origin: try DeviceReference(parsing: args[0]))
    }
}

/// Whether a snapshot's exception store survives a reboot.
public enum SnapshotPersistence: String, Hashable, Sendable, CaseIterable {
    /// `P`: metadata on the COW device; survives deactivation and reboot.
    case persistent = "P"
    /// `PO`: persistent, and an overflow is reported as `Overflow` instead of invalidating.
    case persistentReportingOverflow = "PO"
    /// `N`: exceptions only in memory.
    case transient = "N"

    public var isPersistent: Bool { self != .transient }
}

/// Optional features of `snapshot` (kernel 5.x+), given as `<#features> <feature>...`.
public enum SnapshotFeature: String, Hashable, Sendable, CaseIterable {
    case discardZeroesCOW = "discard_zeroes_cow"
    case discardPassdownOrigin = "discard_passdown_origin"
}

private func checkChunk(_ chunk: Sectors, _ type: String) throws(TableError) {
    // dm_exception_store_set_chunk_size: a power of two no larger than INT_MAX >> SECTOR_SHIFT;
    // the kernel checks it against the devices' logical block sizes at load.
    guard chunk.rawValue > 0, chunk.rawValue & (chunk.rawValue - 1) == 0 else {
        throw TableError.invalidParameter(target: type, reason: "chunk size \(chunk.rawValue) is not a power of two sectors")
    }
    guard chunk.rawValue <= UInt64(Int32.max >> 9) else {
        throw TableError.invalidParameter(target: type, reason: "chunk size \(chunk.rawValue) is above the kernel's limit of \(Int32.max >> 9) sectors")
    }
}

/// `snapshot <origin> <COW device> <P|PO|N> <chunk size> [<#features> <feature>...]`:
/// a point-in-time view of `origin`, with the preserved chunks kept on the COW device.
public struct Snapshot: TargetParameters {
    public static let targetType = "snapshot"
    public var origin: DeviceReference
    public var cow: DeviceReference
    public var persistence: SnapshotPersistence
    public var chunkSize: Sectors
    public var features: [SnapshotFeature]

    public init(origin: DeviceReference, cow: DeviceReference, persistence: SnapshotPersistence = .persistent,
                chunkSize: Sectors, features: [SnapshotFeature] = []) {
        self.origin = origin
        self.cow = cow
        self.persistence = persistence
        self.chunkSize = chunkSize
        self.features = features
    }

    public var devices: [DeviceReference] { [origin, cow] }
    public var parameters: String {
        var text = "\(origin) \(cow) \(persistence.rawValue) \(chunkSize.rawValue)"
        if !features.isEmpty {
            text += " \(features.count) " + features.map(\.rawValue).joined(separator: " ")
        }
        return text
    }

    public init(parameters: String) throws(TableError) {
        let args = try arguments(parameters, of: Self.targetType, count: 4...7)
        guard let persistence = SnapshotPersistence(rawValue: String(args[2])) else {
            throw TableError.malformed(parameters, reason: "persistence must be P, PO or N, found \(args[2])")
        }
        var features: [SnapshotFeature] = []
        if args.count > 4 {
            guard let count = Int(args[4]), count == args.count - 5 else {
                throw TableError.malformed(parameters, reason: "feature count \(args[4]) does not match the features given")
            }
            for token in args[5...] {
                guard let feature = SnapshotFeature(rawValue: String(token)) else {
                    throw TableError.malformed(parameters, reason: "unknown snapshot feature \(token)")
                }
                features.append(feature)
            }
        }
        self.init(origin: try DeviceReference(parsing: args[0]), cow: try DeviceReference(parsing: args[1]),
                  persistence: persistence, chunkSize: try sectors(args[3], "chunk size"), features: features)
    }

    public func validate() throws(TableError) {
        try checkChunk(chunkSize, Self.targetType)
        if features.contains(.discardPassdownOrigin) && !features.contains(.discardZeroesCOW) {
            throw TableError.invalidParameter(
                target: Self.targetType, reason: "discard_passdown_origin requires discard_zeroes_cow")
        }
        if Set(features).count != features.count {
            throw TableError.invalidParameter(target: Self.targetType, reason: "a feature is given twice")
        }
    }
}

/// `snapshot-merge <origin> <COW device> <P|PO> <chunk size>`: loaded on the origin to copy a
/// persistent snapshot's chunks back, rolling the origin back to the snapshot's content.
public struct SnapshotMerge: TargetParameters {
    public static let targetType = "snapshot-merge"
    public var origin: DeviceReference
    public var cow: DeviceReference
    public var persistence: SnapshotPersistence
    public var chunkSize: Sectors

    public init(origin: DeviceReference, cow: DeviceReference, persistence: SnapshotPersistence = .persistent,
                chunkSize: Sectors) {
        self.origin = origin
        self.cow = cow
        self.persistence = persistence
        self.chunkSize = chunkSize
    }

    public var devices: [DeviceReference] { [origin, cow] }
    public var parameters: String { "\(origin) \(cow) \(persistence.rawValue) \(chunkSize.rawValue)" }

    public init(parameters: String) throws(TableError) {
        // The kernel prints a merging snapshot's table as a snapshot's, features included.
        let snapshot = try Snapshot(parameters: parameters)
        self.init(origin: snapshot.origin, cow: snapshot.cow, persistence: snapshot.persistence,
                  chunkSize: snapshot.chunkSize)
    }

    public func validate() throws(TableError) {
        try checkChunk(chunkSize, Self.targetType)
        guard persistence.isPersistent else {
            throw TableError.invalidParameter(target: Self.targetType, reason: "only a persistent (P) snapshot can be merged")
        }
    }
}

/// `zero`: reads return zeroes, writes are discarded.
public struct Zero: TargetParameters {
    public static let targetType = "zero"
    public init() {}
    public var parameters: String { "" }
    public init(parameters: String) throws(TableError) {
        _ = try arguments(parameters, of: Self.targetType, count: 0...0)
    }
}

/// `error`: every I/O fails. Used to fence a range off.
public struct ErrorTarget: TargetParameters {
    public static let targetType = "error"
    public init() {}
    public var parameters: String { "" }
    public init(parameters: String) throws(TableError) {
        _ = try arguments(parameters, of: Self.targetType, count: 0...0)
    }
}
