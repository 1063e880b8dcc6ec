import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Who uses a block device, and so why it must not be taken over.
public struct DeviceUsage: Hashable, Sendable {
    /// Where file systems on the device are mounted (in this process's mount namespace).
    public var mountPoints: [String]
    /// The devices built on it, by their sysfs names (`dm-3`, `md0`).
    public var holders: [String]
    /// Whether it is an active swap area.
    public var swap: Bool
    /// Whether an `O_EXCL` open failed with EBUSY: a file system, device-mapper or md, or a
    /// program such as another `mkfs` claims the device.
    public var exclusivelyHeld: Bool

    public init(mountPoints: [String] = [], holders: [String] = [], swap: Bool = false, exclusivelyHeld: Bool = false) {
        self.mountPoints = mountPoints
        self.holders = holders
        self.swap = swap
        self.exclusivelyHeld = exclusivelyHeld
    }

    public var isFree: Bool { mountPoints.isEmpty && holders.isEmpty && !swap && !exclusivelyHeld }

    /// Why the device is not free, in one sentence naming the most specific cause (a mounted
    /// device is held exclusively too, but "mounted on" is what a person can act on); nil when free.
    public var reason: String? {
        if !mountPoints.isEmpty {
            return "it is mounted on \(mountPoints.joined(separator: ", "))"
        }
        if !holders.isEmpty {
            return "it is held by \(holders.joined(separator: ", ")) (a device-mapper or md device is built on it)"
        }
        if swap { return "it is in use as swap" }
        if exclusivelyHeld { return "another program holds it open exclusively" }
        return nil
    }
}

/// Checks of whether a block device is in use, from the kernel's own tables: mountinfo,
/// sysfs holders, /proc/swaps, and an exclusive open.
public enum DeviceUse {
    /// Where `device` is mounted, from `/proc/self/mountinfo`: the mounts whose field 3 is the
    /// device's number, and also those whose source is a /dev path of that device (btrfs
    /// reports an anonymous device number in field 3). A source path that no longer exists
    /// (such as `/dev/root`) is skipped. Bind mounts appear once per mount point.
    public static func mountPoints(of device: DeviceNumber) throws(BlockIOError) -> [String] {
        let path = "/proc/self/mountinfo"
        let text: String
        switch readWholeFile(path) {
        case .success(let bytes): text = String(decoding: bytes, as: UTF8.self)
        case .failure(let error): throw BlockIOError(path, "read", error)
        }
        var found: [String] = []
        for entry in parseMountInfo(text) {
            var matches = entry.device == device
            if !matches, entry.source.hasPrefix("/dev/") {
                switch statPath(entry.source) {
                case .success(let status):
                    matches = isBlockDevice(status) && DeviceNumber(status.st_rdev) == device
                case .failure(.noSuchFileOrDirectory), .failure(.notDirectory): break
                case .failure(let error): throw BlockIOError(entry.source, "stat", error)
                }
            }
            if matches && !found.contains(entry.mountPoint) { found.append(entry.mountPoint) }
        }
        return found
    }

    /// The devices built on `device`: the names in `/sys/dev/block/MAJOR:MINOR/holders/`
    /// (dm-3, md0...), where the kernel links each device-mapper or md device that opened it
    /// as a component. Empty when the device does not exist.
    public static func holders(of device: DeviceNumber) throws(BlockIOError) -> [String] {
        let path = "/sys/dev/block/\(device)/holders"
        switch directoryEntries(path) {
        case .success(let names): return names.sorted()
        case .failure(.noSuchFileOrDirectory): return []
        case .failure(let error): throw BlockIOError(path, "opendir", error)
        }
    }

    /// The processes that hold `device` open, as `PID (COMMAND)`: every `/proc/PID/fd` entry
    /// that is that block device, this process excepted. Processes that vanish or that this
    /// process may not read are skipped: the answer is what could be seen.
    public static func openers(of device: DeviceNumber) -> [String] {
        guard case .success(let entries) = directoryEntries("/proc") else { return [] }
        let me = getpid()
        var result: [String] = []
        for entry in entries {
            guard let pid = Int32(entry), pid != me,
                  case .success(let descriptors) = directoryEntries("/proc/\(entry)/fd") else { continue }
            for descriptor in descriptors {
                guard case .success(let status) = statPath("/proc/\(entry)/fd/\(descriptor)"), isBlockDevice(status),
                      DeviceNumber(status.st_rdev) == device else { continue }
                let command = (try? readWholeFile("/proc/\(entry)/comm").get()).map(sysfsValue) ?? "?"
                result.append("\(pid) (\(command))")
                break
            }
        }
        return result
    }

    /// Whether `device` is an active swap area: a `partition` line of `/proc/swaps` whose path
    /// is that block device (compared by device number, so any name of the device matches).
    /// False when the kernel has no swap support (no /proc/swaps).
    public static func isSwap(_ device: DeviceNumber) throws(BlockIOError) -> Bool {
        let path = "/proc/swaps"
        let text: String
        switch readWholeFile(path) {
        case .success(let bytes): text = String(decoding: bytes, as: UTF8.self)
        case .failure(.noSuchFileOrDirectory): return false
        case .failure(let error): throw BlockIOError(path, "read", error)
        }
        for entry in parseSwaps(text) where entry.type == "partition" {
            switch statPath(entry.path) {
            case .success(let status):
                if isBlockDevice(status) && DeviceNumber(status.st_rdev) == device { return true }
            // The node was renamed or removed since swapon; it is not the device asked about.
            case .failure(.noSuchFileOrDirectory): continue
            case .failure(let error): throw BlockIOError(entry.path, "stat", error)
            }
        }
        return false
    }

    /// Opens `path` with `O_RDONLY | O_EXCL | O_CLOEXEC` and closes it at once. For a block
    /// device, O_EXCL without O_CREAT asks the kernel to claim the device for this open: EBUSY
    /// means someone holds a claim (a mounted file system, a device-mapper or md device built
    /// on it, swap, or a program that opened it with O_EXCL). Returns nil when the open
    /// succeeded, otherwise its errno. Read-only, so udev's close-after-write watch does not
    /// fire a change event.
    public static func exclusiveOpenError(_ path: FilePath) -> Errno? {
        switch openDescriptor(path.string, O_RDONLY | O_EXCL) {
        case .success(let descriptor):
            _ = closeDescriptor(descriptor)  // read-only: nothing to lose at close
            return nil
        case .failure(let error):
            return error
        }
    }

    /// Everything that makes the block device at `path` unavailable: mounts, holders, swap, and
    /// an exclusive claim.
    public static func usage(of path: FilePath) throws(BlockIOError) -> DeviceUsage {
        let device: DeviceNumber
        switch statPath(path.string) {
        case .success(let status):
            guard isBlockDevice(status) else { throw BlockIOError(path: path.string, reason: .notABlockDevice) }
            device = DeviceNumber(status.st_rdev)
        case .failure(let error):
            throw BlockIOError(path.string, "stat", error)
        }
        var usage = DeviceUsage(mountPoints: try mountPoints(of: device), holders: try holders(of: device),
                                swap: try isSwap(device))
        switch exclusiveOpenError(path) {
        case nil: break
        case .resourceBusy?: usage.exclusivelyHeld = true
        case let error?: throw BlockIOError(path.string, "open O_EXCL", error)
        }
        return usage
    }
}
