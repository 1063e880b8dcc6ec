import BlockIO
import CUdev
import Foundation

extension UdevContext {
    /// Asks the kernel to send `action` (a `change`, as `udevadm trigger` does) for the block
    /// device `number` by writing it to `/sys/dev/block/M:m/uevent`, so that udev runs its rules
    /// for the device again (after snapstack added or removed the marker they look up).
    /// Returns false when the device is gone.
    @discardableResult
    public static func trigger(_ number: DeviceNumber, action: String = "change") -> Bool {
        guard let handle = FileHandle(forWritingAtPath: "/sys/dev/block/\(number)/uevent") else { return false }
        defer { try? handle.close() }
        do { try handle.write(contentsOf: Data(action.utf8)) } catch { return false }
        return true
    }

    /// Waits until udev has no event queued or running (`udev_queue_get_queue_is_empty`, what
    /// `udevadm settle` waits for), polling every 20 ms for up to `timeout` seconds. Returns
    /// whether it became idle.
    public func waitUntilIdle(timeout: Double) -> Bool {
        guard let queue = udev_queue_new(handle) else { return false }
        defer { udev_queue_unref(queue) }
        let deadline = Date().addingTimeInterval(timeout)
        while udev_queue_get_queue_is_empty(queue) == 0 {
            if Date() >= deadline { return false }
            usleep(20_000)
        }
        return true
    }
}

extension UdevContext {
    /// The block devices that are partitions of `disk` (none for a partition or a disk without
    /// any), from sysfs: what a change of the disk's udev properties also concerns, since the
    /// rules hand some of them down to partitions (`IMPORT{parent}`).
    public static func partitions(of disk: DeviceNumber) -> [DeviceNumber] {
        let directory = "/sys/dev/block/\(disk)"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return entries.compactMap { entry in
            guard FileManager.default.fileExists(atPath: "\(directory)/\(entry)/partition"),
                  let text = try? String(contentsOfFile: "\(directory)/\(entry)/dev", encoding: .utf8) else { return nil }
            return DeviceNumber(parsing: text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}
