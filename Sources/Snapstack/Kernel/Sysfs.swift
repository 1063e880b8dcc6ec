import BlockIO
import Foundation

/// What sysfs says about a block device (`/sys/dev/block/M:m`).
enum Sysfs {
    static func read(_ path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The dm UUID of a device-mapper device, nil for other devices.
    static func dmUUID(_ number: DeviceNumber) -> String? {
        read("/sys/dev/block/\(number)/dm/uuid").flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The devices `number` is built on, recursively, itself included.
    static func underlyingDevices(_ number: DeviceNumber) -> Set<DeviceNumber> { BlockTopology.underlying(number) }
}
