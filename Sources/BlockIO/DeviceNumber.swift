import CShims

#if canImport(Glibc)
import Glibc
#endif

/// A block device's `major:minor`, the form in which device-mapper tables name devices.
public struct DeviceNumber: Hashable, Sendable, CustomStringConvertible {
    public var major: UInt32
    public var minor: UInt32

    public init(major: UInt32, minor: UInt32) {
        self.major = major
        self.minor = minor
    }

    public init(_ dev: dev_t) {
        self.init(major: UInt32(snapstack_major(dev)), minor: UInt32(snapstack_minor(dev)))
    }

    public var rawValue: dev_t { snapstack_makedev(major, minor) }

    /// Parses `major:minor` as the kernel prints it; nil for anything else.
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2,
              parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }),
              let major = UInt32(parts[0]), let minor = UInt32(parts[1])
        else { return nil }
        self.init(major: major, minor: minor)
    }

    public var description: String { "\(major):\(minor)" }
}
