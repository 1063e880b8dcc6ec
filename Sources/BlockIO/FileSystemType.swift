import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The kind of file system a path lives on: `statfs(2)`'s magic number.
public struct FileSystemType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// ext2, ext3 and ext4 share one magic number.
    public static let ext4 = FileSystemType(rawValue: 0xEF53)
    public static let xfs = FileSystemType(rawValue: 0x5846_5342)
    public static let btrfs = FileSystemType(rawValue: 0x9123_683E)
    public static let f2fs = FileSystemType(rawValue: 0xF2F5_2010)
    public static let tmpfs = FileSystemType(rawValue: 0x0102_1994)
    public static let overlay = FileSystemType(rawValue: 0x794C_7630)
    public static let zfs = FileSystemType(rawValue: 0x2FC1_2FC1)
    public static let bcachefs = FileSystemType(rawValue: 0xCA45_1A4E)

    /// The file system `path` is on.
    public init(of path: FilePath) throws(Errno) {
        var type: Int64 = 0
        let status = path.withPlatformString { snapstack_fs_type($0, &type) }
        guard status == 0 else { throw Errno(rawValue: errno) }
        rawValue = Int(type)
    }

    /// Whether a loop device over a file here may be asked for direct I/O: block-based file
    /// systems that implement it themselves. Elsewhere the kernel's own check can be fooled —
    /// overlayfs accepts `O_DIRECT` and hands it to a lower file system that may refuse it
    /// (tmpfs does), and the loop device then fails every I/O with EIO.
    public var loopDirectIOIsSafe: Bool { [.ext4, .xfs, .btrfs, .f2fs].contains(self) }

    /// Whether an overwrite of a written block of a file here stays where it is, with no
    /// allocation and no journal transaction (not so on copy-on-write or log-structured file
    /// systems, which allocate anew for every write): the file systems where writing a file's
    /// blocks once ahead of time makes later direct-I/O writes into them cheap.
    public var overwritesInPlace: Bool { [.ext4, .xfs].contains(self) }

    /// Whether a file here copies on write unless it is made with the no-copy-on-write
    /// attribute (`chattr +C`): then even an overwrite allocates, and a full file system fails it.
    public var needsNoCopyOnWrite: Bool { self == .btrfs }

    /// Whether every write here allocates anew, whatever the file's attributes: no file here
    /// can be guaranteed room for its next write.
    public var alwaysCopiesOnWrite: Bool { [.zfs, .bcachefs].contains(self) }

    public var description: String {
        let names: [FileSystemType: String] = [.ext4: "ext4", .xfs: "xfs", .btrfs: "btrfs", .f2fs: "f2fs", .tmpfs: "tmpfs",
                                               .overlay: "overlay", .zfs: "zfs", .bcachefs: "bcachefs"]
        return names[self] ?? "0x" + String(rawValue, radix: 16)
    }
}
