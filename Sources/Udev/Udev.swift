import BlockIO
import CUdev

/// A device as udev's database describes it, copied out of libudev so that it can outlive the
/// handle and cross threads.
public struct UdevDevice: Hashable, Sendable {
    public var sysPath: String
    public var sysName: String
    public var subsystem: String?
    /// `disk` or `partition` for block devices.
    public var deviceType: String?
    public var deviceNode: String?
    public var number: DeviceNumber
    /// udev properties (`ID_SERIAL`, `ID_WWN`, `ID_PART_ENTRY_UUID`, `ID_FS_UUID`, ...).
    public var properties: [String: String]

    public subscript(property: String) -> String? { properties[property] }
}

/// Why a libudev call failed.
public struct UdevError: Error, CustomStringConvertible {
    public var operation: String
    public var description: String { "libudev: \(operation) failed" }
}

/// A libudev context (`udev_new`). Not shared between threads: make one where it is used.
public final class UdevContext {
    let handle: OpaquePointer

    public init() throws {
        guard let handle = udev_new() else { throw UdevError(operation: "udev_new") }
        self.handle = handle
    }

    deinit { udev_unref(handle) }

    /// Whether the udev daemon is running (`udev_queue_get_udev_is_active`: its control socket
    /// exists). Without it nothing creates `/dev/mapper` nodes for libdm's cookies to wait on.
    public var isDaemonRunning: Bool {
        guard let queue = udev_queue_new(handle) else { return false }
        defer { udev_queue_unref(queue) }
        return udev_queue_get_udev_is_active(queue) != 0
    }

    /// Every block device udev knows, disks and partitions, in sysfs order.
    public func blockDevices() throws -> [UdevDevice] {
        guard let enumerate = udev_enumerate_new(handle) else { throw UdevError(operation: "udev_enumerate_new") }
        defer { udev_enumerate_unref(enumerate) }
        guard udev_enumerate_add_match_subsystem(enumerate, "block") >= 0,
              udev_enumerate_scan_devices(enumerate) >= 0
        else { throw UdevError(operation: "enumerate block devices") }
        var result: [UdevDevice] = []
        var entry = udev_enumerate_get_list_entry(enumerate)
        while let current = entry {
            if let path = udev_list_entry_get_name(current),
               let device = udev_device_new_from_syspath(handle, path) {
                result.append(Self.copy(device))
                udev_device_unref(device)
            }
            entry = udev_list_entry_get_next(current)
        }
        return result
    }

    /// The block device with this number, or nil when udev has none.
    public func blockDevice(_ number: DeviceNumber) -> UdevDevice? {
        guard let device = udev_device_new_from_devnum(handle, CChar(UInt8(ascii: "b")), number.rawValue) else {
            return nil
        }
        defer { udev_device_unref(device) }
        return Self.copy(device)
    }

    static func copy(_ device: OpaquePointer) -> UdevDevice {
        func string(_ pointer: UnsafePointer<CChar>?) -> String? { pointer.map { String(cString: $0) } }
        var properties: [String: String] = [:]
        var entry = udev_device_get_properties_list_entry(device)
        while let current = entry {
            if let name = string(udev_list_entry_get_name(current)) {
                properties[name] = string(udev_list_entry_get_value(current)) ?? ""
            }
            entry = udev_list_entry_get_next(current)
        }
        return UdevDevice(
            sysPath: string(udev_device_get_syspath(device)) ?? "",
            sysName: string(udev_device_get_sysname(device)) ?? "",
            subsystem: string(udev_device_get_subsystem(device)),
            deviceType: string(udev_device_get_devtype(device)),
            deviceNode: string(udev_device_get_devnode(device)),
            number: DeviceNumber(udev_device_get_devnum(device)), properties: properties)
    }
}
