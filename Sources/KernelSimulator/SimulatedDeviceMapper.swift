import BlockIO
import DeviceMapper
import SystemPackage

extension SimulatedKernel: DeviceMapperControl {
    static let dmMajor: UInt32 = 253

    func failure(_ operation: String, _ name: String, _ errno: Errno, _ kind: DeviceMapperError.Kind = .failed) -> DeviceMapperError {
        DeviceMapperError(kind: kind, operation: operation, device: name, errno: errno)
    }

    public func driverVersion() throws -> String { "4.48.0" }

    public func targetVersions() throws -> [TargetVersion] { [] }

    public func list() throws -> [ListedDevice] {
        state.withLock { $0.devices.map { ListedDevice(name: $0.key, number: $0.value.number) }.sorted { $0.name < $1.name } }
    }

    public func info(_ name: DMName) throws -> DeviceInfo? { try info(rawName: name.rawValue) }

    public func info(rawName name: String) throws -> DeviceInfo? {
        state.withLock { state in
            guard let device = state.devices[name] else { return nil }
            return DeviceInfo(name: name, uuid: device.uuid, number: device.number, suspended: device.suspended,
                              hasLiveTable: device.live != nil, hasInactiveTable: device.inactive != nil,
                              openCount: device.externalOpens + state.holders(of: device.number),
                              eventNumber: device.eventNumber, readOnly: device.readOnly,
                              targetCount: device.live?.lines.count ?? 0)
        }
    }

    public func rawTable(_ name: DMName) throws -> [RawTargetLine] {
        try state.withLock { state in
            guard let device = state.devices[name.rawValue] else { throw failure("table", name.rawValue, .noSuchAddressOrDevice, .noSuchDevice) }
            return (device.live?.lines ?? []).map {
                RawTargetLine(start: $0.start, length: $0.length, type: $0.target.type, text: $0.target.parameters)
            }
        }
    }

    public func rawStatus(_ name: DMName) throws -> [RawTargetLine] {
        try state.withLock { state in
            guard let device = state.devices[name.rawValue] else { throw failure("status", name.rawValue, .noSuchAddressOrDevice, .noSuchDevice) }
            return (device.live?.lines ?? []).map {
                RawTargetLine(start: $0.start, length: $0.length, type: $0.target.type,
                              text: Self.statusText($0.target, of: device, in: state))
            }
        }
    }

    /// A status line as the kernel prints it for `target`.
    static func statusText(_ target: Target, of device: Device, in state: State) -> String {
        func cowUsage(_ cow: DeviceReference, _ chunk: Sectors) -> String {
            let total = state.resolve(cow).flatMap { state.size(of: $0) }.map { Sectors($0.rawValue / Sectors.size) } ?? .zero
            // A persistent store's header chunk and first metadata chunk.
            let metadata = chunk + chunk
            return "\((metadata + device.allocatedData).rawValue)/\(total.rawValue) \(metadata.rawValue)"
        }
        switch target {
        case .era where state.eraMetadataFails(target):
            return "Error"
        case .era:
            return "8 96/1024 \(device.era) \(device.heldMetadataRoot.map(String.init) ?? "-")"
        case .snapshot(let t):
            return device.invalid ? "Invalid" : cowUsage(t.cow, t.chunkSize)
        case .snapshotMerge(let t):
            // The merge is complete at once: only the metadata stays allocated.
            let total = state.resolve(t.cow).flatMap { state.size(of: $0) }.map { $0.rawValue / Sectors.size } ?? 0
            return "\(2 * t.chunkSize.rawValue)/\(total) \(2 * t.chunkSize.rawValue)"
        default:
            return ""
        }
    }

    func check(_ table: Table, for operation: String, _ name: String, in state: State) throws {
        for reference in table.referencedDevices where state.size(of: reference) == nil {
            throw failure(operation, name, .noSuchAddressOrDevice)
        }
    }

    public func create(_ name: DMName, uuid: DMUUID?, table: Table, readOnly: Bool, udevFlags: UdevFlags) throws {
        try createInactive(name, uuid: uuid, table: table, readOnly: readOnly)
        do { try resume(name, udevFlags: udevFlags, transaction: nil) } catch {
            // libdm removes a device whose first resume failed.
            _ = state.withLock { $0.devices.removeValue(forKey: name.rawValue) }
            throw error
        }
    }

    public func createInactive(_ name: DMName, uuid: DMUUID?, table: Table, readOnly: Bool) throws {
        try change("create \(name)")
        try state.withLock { state in
            guard state.devices[name.rawValue] == nil else { throw failure("create", name.rawValue, .fileExists, .alreadyExists) }
            if let uuid, state.devices.values.contains(where: { $0.uuid == uuid.rawValue }) {
                throw failure("create", name.rawValue, .fileExists, .alreadyExists)
            }
            try check(table, for: "create", name.rawValue, in: state)
            let number = DeviceNumber(major: Self.dmMajor, minor: state.nextDMMinor)
            state.nextDMMinor += 1
            state.devices[name.rawValue] = Device(uuid: uuid?.rawValue, number: number, live: nil, inactive: table, readOnly: readOnly)
        }
    }

    public func load(_ name: DMName, table: Table, readOnly: Bool) throws {
        try change("load \(name) \(table.lines.first?.target.type ?? "")")
        try state.withLock { state in
            guard state.devices[name.rawValue] != nil else { throw failure("reload", name.rawValue, .noSuchAddressOrDevice, .noSuchDevice) }
            try check(table, for: "reload", name.rawValue, in: state)
            state.devices[name.rawValue]!.inactive = table
        }
    }

    public func clearInactive(_ name: DMName) throws {
        try change("clear \(name)")
        state.withLock { state in
            state.devices[name.rawValue]?.inactive = nil
            state.clearReleasedLoops()
        }
    }

    public func suspend(_ name: DMName, options: SuspendOptions) throws {
        try change("suspend \(name)")
        try state.withLock { state in
            guard state.devices[name.rawValue] != nil else { throw failure("suspend", name.rawValue, .noSuchAddressOrDevice, .noSuchDevice) }
            state.devices[name.rawValue]!.suspended = true
        }
    }

    public func resume(_ name: DMName, udevFlags: UdevFlags, transaction: UdevTransaction?) throws {
        try change("resume \(name)")
        try state.withLock { state in
            guard var device = state.devices[name.rawValue] else { throw failure("resume", name.rawValue, .noSuchAddressOrDevice, .noSuchDevice) }
            if let inactive = device.inactive {
                device.live = inactive
                device.inactive = nil
                device.eventNumber += 1
            }
            // dm-era's preresume starts a new era, which needs a commit: the table stays
            // swapped in and the device suspended.
            if state.eraMetadataFails(device.live?.lines.first?.target) {
                state.devices[name.rawValue] = device
                throw failure("resume", name.rawValue, .ioError)
            }
            device.suspended = false
            state.devices[name.rawValue] = device
            state.clearReleasedLoops()
        }
    }

    public func remove(_ name: DMName) throws -> Bool {
        guard try info(name) != nil else { return false }
        try change("remove \(name)")
        return try state.withLock { state in
            guard let device = state.devices[name.rawValue] else { return false }
            guard device.externalOpens + state.holders(of: device.number) == 0 else {
                throw failure("remove", name.rawValue, .resourceBusy)
            }
            state.devices.removeValue(forKey: name.rawValue)
            state.clearReleasedLoops()
            return true
        }
    }

    public func removeDeferred(_ name: DMName) throws -> Bool { try remove(name) }

    public func message(_ name: DMName, sector: Sectors, _ text: String) throws -> String? {
        try change("message \(name) \(text)")
        return try state.withLock { state in
            guard var device = state.devices[name.rawValue], case .era? = device.live?.lines.first?.target else {
                throw failure("message", name.rawValue, .invalidArgument)
            }
            if state.eraMetadataFails(device.live?.lines.first?.target) { throw failure("message", name.rawValue, .ioError) }
            switch text {
            case EraMessage.checkpoint.rawValue: device.era += 1
            case EraMessage.takeMetadataSnapshot.rawValue: device.heldMetadataRoot = 42; device.era += 1
            case EraMessage.dropMetadataSnapshot.rawValue: device.heldMetadataRoot = nil
            default: throw failure("message", name.rawValue, .invalidArgument)
            }
            state.devices[name.rawValue] = device
            return nil
        }
    }

    public func messageTogether(_ messages: [(device: DMName, text: String)]) throws {
        var first: (any Error)?
        for message in messages {
            do { _ = try self.message(message.device, sector: .zero, message.text) } catch { first = first ?? error }
        }
        if let first { throw first }
    }

    public func withUdevTransaction<T>(_ body: (UdevTransaction) throws -> T) rethrows -> T { try body(UdevTransaction()) }

    public func prepare(_ transaction: UdevTransaction) {}

    public func withSuspended<T>(_ names: [DMName], options: SuspendOptions, transaction: UdevTransaction?,
                                 _ body: () throws -> T) throws -> T {
        try suspendingAll(names, options: options, body)
    }

    public func withSuspendedTogether<T>(_ names: [DMName], options: SuspendOptions,
                                         _ body: () throws -> T) throws -> (value: T, window: Duration) {
        let clock = ContinuousClock()
        let started = clock.now
        let value = try suspendingAll(names, options: options, body)
        return (value, clock.now - started)
    }

    /// The guarantee of the real client: every device suspended here is resumed before
    /// returning, also when a suspend or `body` fails; a failed resume is retried once.
    private func suspendingAll<T>(_ names: [DMName], options: SuspendOptions, _ body: () throws -> T) throws -> T {
        var suspended: [DMName] = []
        func resumeAll() -> [String] {
            var failures: [String] = []
            for name in suspended.reversed() {
                do { try resume(name, udevFlags: [], transaction: nil) } catch {
                    do { try resume(name, udevFlags: [], transaction: nil) } catch { failures.append("\(error)") }
                }
            }
            suspended.removeAll()
            return failures
        }
        do {
            for name in names {
                try suspend(name, options: options)
                suspended.append(name)
            }
            let value = try body()
            let failures = resumeAll()
            if !failures.isEmpty { throw DeviceMapperError(kind: .failed, operation: "resume", messages: failures) }
            return value
        } catch {
            let failures = resumeAll()
            if !failures.isEmpty {
                throw DeviceMapperError(kind: .failed, operation: "resume", messages: failures, rollbackFailure: "\(error)")
            }
            throw error
        }
    }
}
