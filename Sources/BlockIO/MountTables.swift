/// One line of `/proc/PID/mountinfo` (proc(5)):
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
public struct MountInfoEntry: Hashable, Sendable {
    public var mountID: Int
    public var parentID: Int
    /// Field 3: the `st_dev` of the files on this mount. For a block-device file system it is the
    /// device's number; btrfs (and other multi-device file systems) show an anonymous `0:N`.
    public var device: DeviceNumber
    /// Field 4: the directory of the file system that is mounted here (`/` for a whole mount).
    public var root: String
    /// Field 5, with the kernel's octal escapes decoded.
    public var mountPoint: String
    public var filesystemType: String
    /// The "mount source" after the separator, decoded: a device path, or whatever the mounter
    /// passed (`none`, `tmpfs`, a server address...).
    public var source: String

    public init(mountID: Int, parentID: Int, device: DeviceNumber, root: String, mountPoint: String,
                filesystemType: String, source: String) {
        self.mountID = mountID
        self.parentID = parentID
        self.device = device
        self.root = root
        self.mountPoint = mountPoint
        self.filesystemType = filesystemType
        self.source = source
    }
}

/// One active swap area from `/proc/swaps`.
public struct SwapEntry: Hashable, Sendable {
    /// The swap file or device, with the kernel's octal escapes decoded.
    public var path: String
    /// `partition` for a block device, `file` for a swap file.
    public var type: String

    public init(path: String, type: String) {
        self.path = path
        self.type = type
    }
}

extension DeviceUse {
    /// Parses the text of `/proc/PID/mountinfo`. Lines that do not have the kernel's shape
    /// (too few fields, no `-` separator, a bad device number) are skipped.
    public static func parseMountInfo(_ text: String) -> [MountInfoEntry] {
        text.split(separator: "\n").compactMap { line in
            // The kernel separates fields with single spaces and escapes any space inside one.
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            // id parent major:minor root mount-point options [optional fields...] - type source super-options
            guard fields.count >= 10,
                  let separator = fields[6...].firstIndex(of: "-"), separator + 3 < fields.count,
                  let mountID = Int(fields[0]), let parentID = Int(fields[1]),
                  let device = DeviceNumber(parsing: fields[2])
            else { return nil }
            return MountInfoEntry(
                mountID: mountID, parentID: parentID, device: device,
                root: decodeOctalEscapes(fields[3]), mountPoint: decodeOctalEscapes(fields[4]),
                filesystemType: decodeOctalEscapes(fields[separator + 1]),
                source: decodeOctalEscapes(fields[separator + 2]))
        }
    }

    /// Parses the text of `/proc/swaps`: a heading line, then one line per swap area whose
    /// first field is the escaped path and whose second is the type.
    public static func parseSwaps(_ text: String) -> [SwapEntry] {
        text.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2 else { return nil }
            return SwapEntry(path: decodeOctalEscapes(fields[0]), type: String(fields[1]))
        }
    }

    /// Undoes the kernel's escaping of paths in /proc tables (`mangle` / `seq_escape`): a
    /// backslash and three octal digits stand for one byte — `\040` space, `\011` tab, `\012`
    /// newline, `\134` backslash. Anything else is kept as written. Bytes that are not UTF-8
    /// become U+FFFD.
    public static func decodeOctalEscapes(_ field: some StringProtocol) -> String {
        let bytes = Array(field.utf8)
        guard bytes.contains(UInt8(ascii: "\\")) else { return String(field) }
        func octal(_ byte: UInt8) -> UInt8? {
            byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "7") ? byte - UInt8(ascii: "0") : nil
        }
        var decoded: [UInt8] = []
        decoded.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\\"), index + 3 < bytes.count,
               let high = octal(bytes[index + 1]), let middle = octal(bytes[index + 2]), let low = octal(bytes[index + 3]),
               high <= 3 {
                decoded.append(high << 6 | middle << 3 | low)
                index += 4
            } else {
                decoded.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: decoded, as: UTF8.self)
    }
}
