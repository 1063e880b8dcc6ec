import BlockIO

/// The target of one table line.
public enum Target: Hashable, Sendable {
    case linear(Linear)
    case striped(Striped)
    case era(Era)
    case snapshotOrigin(SnapshotOrigin)
    case snapshot(Snapshot)
    case snapshotMerge(SnapshotMerge)
    case zero
    case error
    /// A target snapshstack does not model, as read from a device that is not its own.
    /// Kept so that listing foreign devices never fails; never rendered into a load.
    case unmodelled(type: String, parameters: String)

    /// Builds the target of a line read from the kernel (`dm_get_next_target`).
    public init(type: String, parameters: String) throws(TableError) {
        switch type {
        case Linear.targetType: self = .linear(try Linear(parameters: parameters))
        case Striped.targetType: self = .striped(try Striped(parameters: parameters))
        case Era.targetType: self = .era(try Era(parameters: parameters))
        case SnapshotOrigin.targetType: self = .snapshotOrigin(try SnapshotOrigin(parameters: parameters))
        case Snapshot.targetType: self = .snapshot(try Snapshot(parameters: parameters))
        case SnapshotMerge.targetType: self = .snapshotMerge(try SnapshotMerge(parameters: parameters))
        case Zero.targetType: _ = try Zero(parameters: parameters); self = .zero
        case ErrorTarget.targetType: _ = try ErrorTarget(parameters: parameters); self = .error
        default: self = .unmodelled(type: type, parameters: parameters)
        }
    }

    public var type: String {
        switch self {
        case .linear: Linear.targetType
        case .striped: Striped.targetType
        case .era: Era.targetType
        case .snapshotOrigin: SnapshotOrigin.targetType
        case .snapshot: Snapshot.targetType
        case .snapshotMerge: SnapshotMerge.targetType
        case .zero: Zero.targetType
        case .error: ErrorTarget.targetType
        case .unmodelled(let type, _): type
        }
    }

    public var parameters: String {
        switch self {
        case .linear(let t): t.parameters
        case .striped(let t): t.parameters
        case .era(let t): t.parameters
        case .snapshotOrigin(let t): t.parameters
        case .snapshot(let t): t.parameters
        case .snapshotMerge(let t): t.parameters
        case .zero: Zero().parameters
        case .error: ErrorTarget().parameters
        case .unmodelled(_, let parameters): parameters
        }
    }

    func validate() throws(TableError) {
        switch self {
        case .linear(let t): try t.validateAll()
        case .striped(let t): try t.validateAll()
        case .era(let t): try t.validateAll()
        case .snapshotOrigin(let t): try t.validateAll()
        case .snapshot(let t): try t.validateAll()
        case .snapshotMerge(let t): try t.validateAll()
        case .zero, .error: break
        case .unmodelled(let type, _):
            throw TableError.invalidParameter(target: type, reason: "snapstack does not load \(type) tables")
        }
    }
}

/// `<start> <length> <target type> <parameters>`.
public struct TableLine: Hashable, Sendable, CustomStringConvertible {
    public var start: Sectors
    public var length: Sectors
    public var target: Target

    public init(start: Sectors, length: Sectors, target: Target) {
        self.start = start
        self.length = length
        self.target = target
    }

    /// The line as `dmsetup table` prints it.
    public var description: String {
        let parameters = target.parameters
        return "\(start.rawValue) \(length.rawValue) \(target.type)" + (parameters.isEmpty ? "" : " \(parameters)")
    }

    /// Parses one line as `dmsetup table` prints it.
    public init(parsing line: some StringProtocol) throws(TableError) {
        let fields = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: true)
        guard fields.count >= 3,
              let start = UInt64(decimal: fields[0]), let length = UInt64(decimal: fields[1])
        else { throw TableError.malformed(String(line), reason: "expected <start> <length> <type> [<parameters>]") }
        let parameters = fields.count == 4 ? String(fields[3]) : ""
        self.init(start: Sectors(start), length: Sectors(length),
                  target: try Target(type: String(fields[2]), parameters: parameters))
    }
}

/// An ordered device-mapper table whose lines tile `0..<size` with no gap and no overlap.
/// Only a `Table` can be loaded, so an ill-formed one never reaches the kernel.
public struct Table: Hashable, Sendable, CustomStringConvertible {
    public let lines: [TableLine]

    public init(_ lines: [TableLine]) throws(TableError) {
        guard !lines.isEmpty else { throw TableError.empty }
        var expected = Sectors.zero
        for (index, line) in lines.enumerated() {
            let number = index + 1
            guard line.length > .zero else { throw TableError.zeroLength(line: number) }
            guard line.start == expected else {
                throw TableError.notContiguous(line: number, expectedStart: expected, actualStart: line.start)
            }
            guard let end = line.start.adding(line.length) else { throw TableError.lengthOverflow(line: number) }
            expected = end
        }
        self.lines = lines
    }

    /// A table of one line covering `length` sectors.
    public init(length: Sectors, _ target: Target) throws(TableError) {
        try self.init([TableLine(start: .zero, length: length, target: target)])
    }

    /// Parses `dmsetup table` output for one device (one line per target).
    public init(parsing text: some StringProtocol) throws(TableError) {
        var lines: [TableLine] = []
        for line in text.split(whereSeparator: \.isNewline) where !line.allSatisfy(\.isWhitespace) {
            lines.append(try TableLine(parsing: line))
        }
        try self.init(lines)
    }

    /// The device size this table gives.
    /// The devices the table names by number, line by line: what loading it holds open.
    public var referencedDevices: [DeviceNumber] {
        lines.flatMap { line -> [DeviceReference] in
            switch line.target {
            case .linear(let t): [t.device]
            case .striped(let t): t.devices
            case .era(let t): [t.metadata, t.origin]
            case .snapshotOrigin(let t): [t.origin]
            case .snapshot(let t): [t.origin, t.cow]
            case .snapshotMerge(let t): [t.origin, t.cow]
            case .zero, .error, .unmodelled: []
            }
        }.compactMap { if case .number(let number) = $0 { number } else { nil } }
    }

    public var size: Sectors { lines[lines.count - 1].start + lines[lines.count - 1].length }

    /// Checks every line's parameters as the kernel would; called before every load.
    public func validate() throws(TableError) {
        for line in lines { try line.target.validate() }
    }

    public var description: String { lines.map(\.description).joined(separator: "\n") }
}
