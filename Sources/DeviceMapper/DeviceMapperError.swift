import SystemPackage

/// A device-mapper operation that failed, with the kernel's errno and libdm's own words.
public struct DeviceMapperError: Error, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// The ioctl (or libdm around it) failed.
        case failed
        /// `/dev/mapper/control` could not be opened: no device-mapper in this kernel, or no permission.
        case driverUnavailable
        /// The device named does not exist.
        case noSuchDevice
        /// A device of that name already exists; nothing was changed.
        case alreadyExists
        /// The table was refused before reaching the kernel.
        case invalidTable(TableError)
        /// The kernel answered with something snapstack could not parse.
        case unparsable(TableError)
    }

    public var kind: Kind
    /// The libdm task: `create`, `reload`, `suspend`, `resume`, `remove`, `status`, ...
    public var operation: String
    public var device: String?
    public var errno: Errno?
    /// What libdm logged at warning level or above while running the task.
    public var messages: [String]
    /// Set when undoing a partly done operation failed as well: what is left over is named here.
    public var rollbackFailure: String?

    public init(kind: Kind, operation: String, device: String? = nil, errno: Errno? = nil,
                messages: [String] = [], rollbackFailure: String? = nil) {
        self.kind = kind
        self.operation = operation
        self.device = device
        self.errno = errno
        self.messages = messages
        self.rollbackFailure = rollbackFailure
    }

    public var description: String {
        var text = "device-mapper \(operation)"
        if let device { text += " of \(device)" }
        switch kind {
        case .failed: text += " failed"
        case .driverUnavailable: text += " failed: the kernel's device-mapper driver is not available"
        case .noSuchDevice: text += " failed: no such device"
        case .alreadyExists: text += " refused: a device of that name already exists"
        case .invalidTable(let error): text += " refused: \(error)"
        case .unparsable(let error): text += ": unexpected answer from the kernel: \(error)"
        }
        if let errno { text += " (\(errno))" }
        let said = messages.filter { !$0.isEmpty }
        if !said.isEmpty { text += "; libdm: " + said.joined(separator: "; ") }
        if let rollbackFailure { text += "; undoing it failed too: \(rollbackFailure)" }
        return text
    }
}
