import BlockIO

/// Everything snapstack asks of device-mapper, as one protocol: the seam between the logic that
/// decides what the tables should be and the kernel that holds them. `DeviceMapperClient` is
/// the real one (libdm and `/dev/mapper/control`); a simulated kernel in memory is the other,
/// so that the orchestration above can be run and crashed at every step without root.
///
/// Requirements carry no default arguments (a protocol cannot); the extension below gives the
/// short forms callers use.
public protocol DeviceMapperControl: Sendable {
    func driverVersion() throws -> String
    func targetVersions() throws -> [TargetVersion]
    func list() throws -> [ListedDevice]
    func info(_ name: DMName) throws -> DeviceInfo?
    /// For names another tool made, which `DMName` may refuse.
    func info(rawName name: String) throws -> DeviceInfo?
    func rawTable(_ name: DMName) throws -> [RawTargetLine]
    func rawStatus(_ name: DMName) throws -> [RawTargetLine]

    func create(_ name: DMName, uuid: DMUUID?, table: Table, readOnly: Bool, udevFlags: UdevFlags) throws
    func createInactive(_ name: DMName, uuid: DMUUID?, table: Table, readOnly: Bool) throws
    func load(_ name: DMName, table: Table, readOnly: Bool) throws
    func clearInactive(_ name: DMName) throws
    func suspend(_ name: DMName, options: SuspendOptions) throws
    func resume(_ name: DMName, udevFlags: UdevFlags, transaction: UdevTransaction?) throws
    /// False when there was nothing to remove.
    @discardableResult
    func remove(_ name: DMName) throws -> Bool
    @discardableResult
    func removeDeferred(_ name: DMName) throws -> Bool
    func message(_ name: DMName, sector: Sectors, _ text: String) throws -> String?
    /// All messages at the same time; throws the first failure after all were tried.
    func messageTogether(_ messages: [(device: DMName, text: String)]) throws

    func withUdevTransaction<T>(_ body: (UdevTransaction) throws -> T) rethrows -> T
    func prepare(_ transaction: UdevTransaction)
    /// Suspends `names` in order, runs `body`, resumes in reverse order; never leaves one suspended.
    func withSuspended<T>(_ names: [DMName], options: SuspendOptions, transaction: UdevTransaction?,
                          _ body: () throws -> T) throws -> T
    /// Suspends `names` at the same time, runs `body`, resumes them at the same time; returns
    /// the freeze window. Never leaves one suspended.
    func withSuspendedTogether<T>(_ names: [DMName], options: SuspendOptions,
                                  _ body: () throws -> T) throws -> (value: T, window: Duration)
}

extension DeviceMapperControl {
    /// The live table, parsed: every implementation's lines go through the same parsers.
    public func table(_ name: DMName) throws -> Table {
        let lines = try rawTable(name)
        do {
            return try Table(lines.map { line throws(TableError) in
                TableLine(start: line.start, length: line.length,
                          target: try Target(type: line.type, parameters: line.text))
            })
        } catch {
            throw DeviceMapperError(kind: .unparsable(error), operation: "table", device: name.rawValue)
        }
    }

    /// The status of each line, parsed.
    public func status(_ name: DMName) throws -> [StatusLine] {
        let lines = try rawStatus(name)
        do {
            return try lines.map { line throws(TableError) in
                StatusLine(start: line.start, length: line.length,
                           status: try TargetStatus(type: line.type, text: line.text))
            }
        } catch {
            throw DeviceMapperError(kind: .unparsable(error), operation: "status", device: name.rawValue)
        }
    }

    public func create(_ name: DMName, uuid: DMUUID?, table: Table, udevFlags: UdevFlags = []) throws {
        try create(name, uuid: uuid, table: table, readOnly: false, udevFlags: udevFlags)
    }
    public func createInactive(_ name: DMName, uuid: DMUUID?, table: Table) throws {
        try createInactive(name, uuid: uuid, table: table, readOnly: false)
    }
    public func load(_ name: DMName, table: Table) throws { try load(name, table: table, readOnly: false) }
    public func suspend(_ name: DMName) throws { try suspend(name, options: []) }
    public func resume(_ name: DMName, transaction: UdevTransaction? = nil) throws {
        try resume(name, udevFlags: [], transaction: transaction)
    }
    public func message(_ name: DMName, _ text: String) throws -> String? { try message(name, sector: .zero, text) }
    public func message(_ name: DMName, era message: EraMessage) throws { _ = try self.message(name, sector: .zero, message.rawValue) }
    public func withSuspended<T>(_ names: [DMName], _ body: () throws -> T) throws -> T {
        try withSuspended(names, options: [], transaction: nil, body)
    }
    public func withSuspendedTogether<T>(_ names: [DMName], _ body: () throws -> T) throws -> (value: T, window: Duration) {
        try withSuspendedTogether(names, options: [], body)
    }
}

extension DeviceMapperClient: DeviceMapperControl {}
