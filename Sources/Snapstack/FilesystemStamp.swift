import CXXHash

/// What a filesystem's own superblock says about the writes it has seen, in a form that two
/// moments can be compared by: equal stamps prove that the filesystem was not mounted
/// read-write in between. That is what lets change tracking continue across a reboot: the stack
/// is gone from power-off to the next build, and only the filesystem can say that nothing wrote
/// to the disk meanwhile.
///
/// - ext2/3/4 (`ExtStamp`): the mount count, the time of the last write, the lifetime writes
///   and the state, which any read-write mount and any journal replay change.
/// - xfs, version 5 (`XFSStamp`): the superblock's log sequence number, which every mount
///   moves but one with `norecovery` (measured: a read-only mount writes the log too), and its
///   inode and free-block counters.
///
/// Only a write through the filesystem is seen: a program writing the raw disk under it
/// (`dd`) changes no counter. Other filesystems (xfs version 4 included, whose superblock keeps
/// no log sequence number) cannot be vouched for.
///
/// Rendered as one line of `key=value` words after the kind, which `init(parsing:)` reads
/// back; the state database keeps that line.
public enum FilesystemStamp: Equatable, Sendable, CustomStringConvertible {
    case ext(ExtStamp)
    case xfs(XFSStamp)

    /// How many bytes from the device's start `read(_:)` needs: ext's superblock ends there.
    public static let bytesNeeded = ExtStamp.bytesNeeded

    /// Why a device's first bytes give no stamp.
    public struct Unstampable: Error, Equatable, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The stamp of the filesystem whose device starts with `bytes` (at least `bytesNeeded`).
    public static func read(_ bytes: [UInt8]) -> Result<FilesystemStamp, Unstampable> {
        guard bytes.count >= bytesNeeded else {
            return .failure(Unstampable(description: "its first \(bytesNeeded) bytes could not be read"))
        }
        if bytes.starts(with: XFSStamp.magic) { return XFSStamp.read(bytes).map(FilesystemStamp.xfs) }
        return ExtStamp.read(bytes).map(FilesystemStamp.ext)
    }

    /// The filesystem's UUID, as blkid prints it.
    public var uuid: String {
        switch self {
        case .ext(let stamp): stamp.uuid
        case .xfs(let stamp): stamp.uuid
        }
    }

    /// The ext stamp, if it is one.
    public var ext: ExtStamp? { if case .ext(let stamp) = self { stamp } else { nil } }

    public var description: String {
        switch self {
        case .ext(let stamp): stamp.description
        case .xfs(let stamp): stamp.description
        }
    }

    /// Reads back what `description` rendered; nil for anything else.
    public init?(parsing line: String) {
        if let stamp = ExtStamp(parsing: line) {
            self = .ext(stamp)
        } else if let stamp = XFSStamp(parsing: line) {
            self = .xfs(stamp)
        } else {
            return nil
        }
    }

    /// What differs from `later`, in words, for an operator: "mount count 3 → 4, …".
    public func changes(to later: FilesystemStamp) -> String {
        switch (self, later) {
        case (.ext(let before), .ext(let after)): before.changes(to: after)
        case (.xfs(let before), .xfs(let after)): before.changes(to: after)
        default: "another kind of filesystem (\(description.prefix { $0 != " " }) → \(later.description.prefix { $0 != " " }))"
        }
    }

    /// Reads the `key=value` words after `kind`, exactly `keys`; nil for anything else.
    static func fields(_ line: String, kind: String, keys: Set<Substring>) -> [Substring: Substring]? {
        let words = line.split(separator: " ")
        guard words.first.map(String.init) == kind, words.count == keys.count + 1 else { return nil }
        var fields: [Substring: Substring] = [:]
        for word in words.dropFirst() {
            guard let equals = word.firstIndex(of: "=") else { return nil }
            fields[word[..<equals]] = word[word.index(after: equals)...]
        }
        return Set(fields.keys) == keys ? fields : nil
    }

    /// A UUID's 16 bytes as blkid prints them.
    static func uuid(_ bytes: ArraySlice<UInt8>) -> String {
        let hex = bytes.map { byte in
            let digits = String(byte, radix: 16)
            return byte < 16 ? "0" + digits : digits
        }
        return [0..<4, 4..<6, 6..<8, 8..<10, 10..<16].map { hex[$0].joined() }.joined(separator: "-")
    }
}

/// An ext2/3/4 superblock's account of its writes: its mount count, the time of its last
/// write, its lifetime writes in KiB, its state, and a digest of the whole superblock. Any
/// read-write mount changes the superblock (mount count, mount and write times, state), and so
/// does a journal replay.
public struct ExtStamp: Equatable, Sendable, CustomStringConvertible {
    /// The filesystem's UUID, as blkid prints it.
    public var uuid: String
    public var mountCount: UInt16
    /// Seconds since the epoch of the superblock's last write.
    public var writeTime: UInt64
    /// Lifetime writes in KiB, as the kernel counts them at each superblock write.
    public var kibibytesWritten: UInt64
    /// `s_state`: bit 0 set when it was cleanly unmounted.
    public var state: UInt16
    /// XXH3-64 of the 1024 bytes of the superblock.
    public var digest: UInt64

    /// Where the superblock starts on the device, and how long it is.
    public static let superblockOffset = 1024
    public static let superblockLength = 1024
    /// How many bytes from the device's start `read(_:)` needs.
    public static let bytesNeeded = superblockOffset + superblockLength
    static let magic: UInt16 = 0xEF53

    public typealias Unstampable = FilesystemStamp.Unstampable

    /// The stamp of the ext filesystem whose device starts with `bytes` (at least `bytesNeeded`).
    public static func read(_ bytes: [UInt8]) -> Result<ExtStamp, Unstampable> {
        guard bytes.count >= bytesNeeded else {
            return .failure(Unstampable(description: "its first \(bytesNeeded) bytes could not be read"))
        }
        let superblock = Array(bytes[superblockOffset..<bytesNeeded])
        func little(_ offset: Int, _ width: Int) -> UInt64 {
            (0..<width).reduce(0) { $0 | UInt64(superblock[offset + $1]) << (8 * $1) }
        }
        guard UInt16(little(0x38, 2)) == magic else {
            return .failure(Unstampable(description: "it holds no ext2, ext3, ext4 or xfs filesystem, the kinds whose superblock accounts for its writes"))
        }
        let uuid = FilesystemStamp.uuid(superblock[0x68..<0x78])
        let digest = superblock.withUnsafeBytes { XXH3_64bits($0.baseAddress, $0.count) }
        return .success(ExtStamp(
            uuid: uuid, mountCount: UInt16(little(0x34, 2)),
            writeTime: little(0x30, 4) | little(0x274, 1) << 32, kibibytesWritten: little(0x178, 8),
            state: UInt16(little(0x3A, 2)), digest: digest))
    }

    public var description: String {
        "ext uuid=\(uuid) mounts=\(mountCount) written=\(kibibytesWritten)KiB wtime=\(writeTime) state=\(state) sb=\(String(digest, radix: 16))"
    }

    /// Reads back what `description` rendered; nil for anything else.
    public init?(parsing line: String) {
        guard let fields = FilesystemStamp.fields(line, kind: "ext", keys: ["uuid", "mounts", "written", "wtime", "state", "sb"]),
              let uuid = fields["uuid"], uuid.count == 36,
              let mounts = fields["mounts"].flatMap({ UInt16($0) }),
              let written = fields["written"], written.hasSuffix("KiB"), let kibibytes = UInt64(written.dropLast(3)),
              let writeTime = fields["wtime"].flatMap({ UInt64($0) }),
              let state = fields["state"].flatMap({ UInt16($0) }),
              let digest = fields["sb"].flatMap({ UInt64($0, radix: 16) })
        else { return nil }
        self.init(uuid: String(uuid), mountCount: mounts, writeTime: writeTime, kibibytesWritten: kibibytes,
                  state: state, digest: digest)
    }

    public init(uuid: String, mountCount: UInt16, writeTime: UInt64, kibibytesWritten: UInt64, state: UInt16, digest: UInt64) {
        self.uuid = uuid
        self.mountCount = mountCount
        self.writeTime = writeTime
        self.kibibytesWritten = kibibytesWritten
        self.state = state
        self.digest = digest
    }

    /// What differs from `later`, in words, for an operator: "mount count 3 → 4, …".
    public func changes(to later: ExtStamp) -> String {
        var changes: [String] = []
        if uuid != later.uuid { changes.append("filesystem UUID \(uuid) → \(later.uuid) (another filesystem)") }
        if mountCount != later.mountCount { changes.append("mount count \(mountCount) → \(later.mountCount)") }
        if kibibytesWritten != later.kibibytesWritten {
            changes.append("lifetime writes \(kibibytesWritten) → \(later.kibibytesWritten) KiB")
        }
        if writeTime != later.writeTime { changes.append("last write time \(writeTime) → \(later.writeTime)") }
        if state != later.state { changes.append("state \(state) → \(later.state)") }
        if changes.isEmpty && digest != later.digest { changes.append("its superblock was rewritten") }
        return changes.joined(separator: ", ")
    }
}

/// A version 5 xfs superblock's account of its writes: its log sequence number (the LSN of its
/// last write, which mounting, writing, unmounting and even a read-only mount move), its inode
/// and free-block counters, and a digest of the superblock's sector.
public struct XFSStamp: Equatable, Sendable, CustomStringConvertible {
    public var uuid: String
    /// `sb_lsn`: cycle in the high 32 bits, block in the low.
    public var logSequence: UInt64
    public var inodes: UInt64
    public var freeInodes: UInt64
    public var freeBlocks: UInt64
    /// XXH3-64 of the 512 bytes of the superblock's sector.
    public var digest: UInt64

    static let magic = Array("XFSB".utf8)
    static let sectorLength = 512

    public static func read(_ bytes: [UInt8]) -> Result<XFSStamp, FilesystemStamp.Unstampable> {
        guard bytes.count >= sectorLength, bytes.starts(with: magic) else {
            return .failure(FilesystemStamp.Unstampable(description: "it holds no xfs filesystem"))
        }
        let sector = Array(bytes[0..<sectorLength])
        func big(_ offset: Int, _ width: Int) -> UInt64 {
            (0..<width).reduce(0) { $0 << 8 | UInt64(sector[offset + $1]) }
        }
        // sb_versionnum: the low 4 bits are the version; only version 5 has sb_lsn.
        let version = big(0x64, 2) & 0xF
        guard version == 5 else {
            return .failure(FilesystemStamp.Unstampable(description: "it holds an xfs filesystem of version \(version), whose superblock keeps no log sequence number (only version 5, the default since xfsprogs 3.2.3, does)"))
        }
        let digest = sector.withUnsafeBytes { XXH3_64bits($0.baseAddress, $0.count) }
        return .success(XFSStamp(uuid: FilesystemStamp.uuid(sector[0x20..<0x30]), logSequence: big(0xF0, 8),
                                 inodes: big(0x80, 8), freeInodes: big(0x88, 8), freeBlocks: big(0x90, 8), digest: digest))
    }

    public init(uuid: String, logSequence: UInt64, inodes: UInt64, freeInodes: UInt64, freeBlocks: UInt64, digest: UInt64) {
        self.uuid = uuid
        self.logSequence = logSequence
        self.inodes = inodes
        self.freeInodes = freeInodes
        self.freeBlocks = freeBlocks
        self.digest = digest
    }

    public var description: String {
        "xfs uuid=\(uuid) lsn=\(String(logSequence, radix: 16)) icount=\(inodes) ifree=\(freeInodes) fdblocks=\(freeBlocks) sb=\(String(digest, radix: 16))"
    }

    public init?(parsing line: String) {
        guard let fields = FilesystemStamp.fields(line, kind: "xfs", keys: ["uuid", "lsn", "icount", "ifree", "fdblocks", "sb"]),
              let uuid = fields["uuid"], uuid.count == 36,
              let lsn = fields["lsn"].flatMap({ UInt64($0, radix: 16) }),
              let inodes = fields["icount"].flatMap({ UInt64($0) }),
              let free = fields["ifree"].flatMap({ UInt64($0) }),
              let blocks = fields["fdblocks"].flatMap({ UInt64($0) }),
              let digest = fields["sb"].flatMap({ UInt64($0, radix: 16) })
        else { return nil }
        self.init(uuid: String(uuid), logSequence: lsn, inodes: inodes, freeInodes: free, freeBlocks: blocks, digest: digest)
    }

    public func changes(to later: XFSStamp) -> String {
        var changes: [String] = []
        if uuid != later.uuid { changes.append("filesystem UUID \(uuid) → \(later.uuid) (another filesystem)") }
        if logSequence != later.logSequence {
            changes.append("log sequence number \(String(logSequence, radix: 16)) → \(String(later.logSequence, radix: 16)) (mounted)")
        }
        if inodes != later.inodes || freeInodes != later.freeInodes { changes.append("inodes \(inodes)/\(freeInodes) free → \(later.inodes)/\(later.freeInodes) free") }
        if freeBlocks != later.freeBlocks { changes.append("free blocks \(freeBlocks) → \(later.freeBlocks)") }
        if changes.isEmpty && digest != later.digest { changes.append("its superblock was rewritten") }
        return changes.joined(separator: ", ")
    }
}
