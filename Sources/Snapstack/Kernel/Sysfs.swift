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

    /// The devices `number` is built on, recursively (`slaves/`), itself included.
    static func underlyingDevices(_ number: DeviceNumber) -> Set<DeviceNumber> {
        var result: Set<DeviceNumber> = [number]
        var queue = [number]
        while let next = queue.popLast() {
            let directory = "/sys/dev/block/\(next)/slaves"
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
                guard let text = read("/sys/class/block/\(name)/dev"), let slave = DeviceNumber(parsing: text),
                      result.insert(slave).inserted else { continue }
                queue.append(slave)
            }
            // A partition sits on its disk: a store on /dev/sdb2 must not be refused for sdb1, but
            // a store on a partition of a protected whole disk must be.
            if let parent = read("/sys/dev/block/\(next)/../dev").flatMap({ DeviceNumber(parsing: $0) }),
               FileManager.default.fileExists(atPath: "/sys/dev/block/\(next)/partition"),
               result.insert(parent).inserted {
                queue.append(parent)
            }
        }
        return result
    }
}
