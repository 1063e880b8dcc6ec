import Foundation
import SystemPackage

/// How block devices are stacked, as sysfs shows it under `SYSFS/dev/block/M:m`.
public enum BlockTopology {
    /// The devices `number` is built on, recursively (`slaves/`), itself included. A partition
    /// sits on its disk: a store on /dev/sdb2 must not be refused for sdb1, but a store on a
    /// partition of a protected whole disk must be.
    public static func underlying(_ number: DeviceNumber, sysfs: String = "/sys") -> Set<DeviceNumber> {
        func read(_ path: String) -> String? {
            (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        var result: Set<DeviceNumber> = [number]
        var queue = [number]
        while let next = queue.popLast() {
            let directory = "\(sysfs)/dev/block/\(next)"
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory + "/slaves")) ?? [] {
                guard let text = read("\(sysfs)/class/block/\(name)/dev"), let slave = DeviceNumber(parsing: text),
                      result.insert(slave).inserted else { continue }
                queue.append(slave)
            }
            if FileManager.default.fileExists(atPath: directory + "/partition"),
               let parent = read(directory + "/../dev").flatMap({ DeviceNumber(parsing: $0) }),
               result.insert(parent).inserted {
                queue.append(parent)
            }
        }
        return result
    }

    /// The block devices a page fault of this process may have to wait for: those under the
    /// file systems of its mapped files (its binary, its libraries) and under the swap areas,
    /// which hold its anonymous pages once they are swapped out. Unknown when a mapped file is on
    /// a file system with no device number of its own (its `maps` major is 0) that is not known
    /// to live in memory or across a network — btrfs, say — or a swap area cannot be found.
    ///
    /// `mountinfo` names the file system behind each such number (statfs cannot: through 9p it
    /// reports the server's type). A file of an overlayfs shows the number of the layer that
    /// holds it.
    public static func pagingDevices(maps: String, swaps: String, mountinfo: String, sysfs: String = "/sys",
                                     deviceOf: (String, _ partition: Bool) -> DeviceNumber? = Self.device) -> Result<Set<DeviceNumber>, Unknown> {
        let types = mountTypes(mountinfo)
        var direct: Set<DeviceNumber> = []
        // "7f..-7f.. r-xp 00000000 fd:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6" (hex numbers)
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6 else { continue }
            let path = fields[5].trimmingCharacters(in: .whitespaces)
            guard path.hasPrefix("/") else { continue } // [heap], [stack], [vdso]: anonymous
            let parts = fields[3].split(separator: ":")
            guard parts.count == 2, let major = UInt32(parts[0], radix: 16), let minor = UInt32(parts[1], radix: 16) else {
                return .failure(Unknown(description: "unexpected line in /proc/self/maps: \(line)"))
            }
            let number = DeviceNumber(major: major, minor: minor)
            if major != 0 {
                direct.insert(number)
            } else if !Self.onNoBlockDevice.contains(types[number] ?? "") {
                return .failure(Unknown(description: "\(path) is mapped from a file system with no device number of its own (\(types[number] ?? "not mounted here")) that may be on a block device"))
            }
        }
        // "Filename  Type  Size  Used  Priority", then one line per area; spaces in the name are \040.
        for line in swaps.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2 else { continue }
            let path = fields[0].replacingOccurrences(of: "\\040", with: " ")
            guard let number = deviceOf(path, fields[1] == "partition"), number.major != 0 else {
                return .failure(Unknown(description: "cannot tell which block device holds the swap area \(path)"))
            }
            direct.insert(number)
        }
        return .success(direct.reduce(into: Set<DeviceNumber>()) { $0.formUnion(underlying($1, sysfs: sysfs)) })
    }

    /// File systems whose files are in memory or across a network, never on a local block device.
    static let onNoBlockDevice: Set<String> = ["tmpfs", "ramfs", "devtmpfs", "9p", "virtiofs", "nfs", "nfs4", "cifs", "smb3", "proc", "hugetlbfs"]

    /// The type of each mounted file system by its device number, from /proc/self/mountinfo:
    /// "36 35 0:21 / / ro,relatime - 9p /dev/root ro,trans=virtio" (decimal numbers).
    static func mountTypes(_ mountinfo: String) -> [DeviceNumber: String] {
        var types: [DeviceNumber: String] = [:]
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 2, let number = DeviceNumber(parsing: fields[2]),
                  let separator = fields.firstIndex(of: "-"), separator + 1 < fields.count else { continue }
            types[number] = String(fields[separator + 1])
        }
        return types
    }

    /// Why the paging devices cannot be told.
    public struct Unknown: Error, CustomStringConvertible {
        public var description: String
    }

    /// This process's paging devices, from /proc/self/maps, /proc/swaps and /proc/self/mountinfo.
    public static func pagingDevices() -> Result<Set<DeviceNumber>, Unknown> {
        guard let maps = try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8),
              let swaps = try? String(contentsOfFile: "/proc/swaps", encoding: .utf8),
              let mountinfo = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else {
            return .failure(Unknown(description: "cannot read /proc/self/maps, /proc/swaps or /proc/self/mountinfo"))
        }
        return pagingDevices(maps: maps, swaps: swaps, mountinfo: mountinfo)
    }

    /// The device a swap partition is, or the file system a swap file is on.
    public static func device(_ path: String, partition: Bool) -> DeviceNumber? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return DeviceNumber(partition ? status.st_rdev : status.st_dev)
    }
}
