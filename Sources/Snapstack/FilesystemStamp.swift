import CXXHash

/// What an ext2/3/4 filesystem's own superblock says about the writes it has seen: its mount
/// count, the time of its last write, its lifetime writes in KiB, its state, and a digest of
/// the whole superblock. Any read-write mount changes the superblock (mount count, mount and
/// write times, state), and so does a journal replay; so two equal stamps taken at two moments
/// prove that the filesystem was not mounted read-write in between. That is what lets change
/// tracking continue across a reboot: the stack is gone from power-off to the next build, and
/// only the filesystem can say that nothing wrote to the disk meanwhile.
///
/// Only a write through the filesystem is seen: a program writing the raw disk under it
/// (`dd`) changes no counter. Other filesystems have no such counters in one place (xfs keeps
/// its log position in the log, not the superblock), so their disks cannot be vouched for.
///
/// Rendered as one line of `key=value` words, which `init(parsing:)` reads back; the state
/// database keeps that line.
public struct FilesystemStamp: Equatable, Sendable, CustomStringConvertible {
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

    /// Why a device's first bytes give no stamp.
    public struct Unstampable: Error, Equatable, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The stamp of the filesystem whose device starts with `bytes` (at least `bytesNeeded`).
    public static func read(_ bytes: [UInt8]) -> Result<FilesystemStamp, Unstampable> {
        guard bytes.count >= bytesNeeded else {
            return .failure(Unstampable(description: "its first \(bytesNeeded) bytes could not be read"))
        }
        let superblock = Array(bytes[superblockOffset..<bytesNeeded])
        func little(_ offset: Int, _ width: Int) -> UInt64 {
            (0..<width).reduce(0) { $0 | UInt64(superblock[offset + $1]) << (8 * $1) }
        }
        guard UInt16(little(0x38, 2)) == magic else {
            return .failure(Unstampable(description: "it holds no ext2, ext3 or ext4 filesystem, the only kind whose superblock counts its writes"))
        }
        let uuidBytes = superblock[0x68..<0x78].map { byte in
            let digits = String(byte, radix: 16)
            return byte < 16 ? "0" + digits : digits
        }
        let uuid = [0..<4, 4..<6, 6..<8, 8..<10, 10..<16].map { uuidBytes[$0].joined() }.joined(separator: "-")
        let digest = superblock.withUnsafeBytes { XXH3_64bits($0.baseAddress, $0.count) }
        return .success(FilesystemStamp(
            uuid: uuid, mountCount: UInt16(little(0x34, 2)),
            writeTime: little(0x30, 4) | little(0x274, 1) << 32, kibibytesWritten: little(0x178, 8),
            state: UInt16(little(0x3A, 2)), digest: digest))
    }

    public var description: String {
        "ext uuid=\(uuid) mounts=\(mountCount) written=\(kibibytesWritten)KiB wtime=\(writeTime) state=\(state) sb=\(String(digest, radix: 16))"
    }

    /// Reads back what `description` rendered; nil for anything else.
    public init?(parsing line: String) {
        let words = line.split(separator: " ")
        guard words.first == "ext", words.count == 7 else { return nil }
        var fields: [Substring: Substring] = [:]
        for word in words.dropFirst() {
            guard let equals = word.firstIndex(of: "=") else { return nil }
            fields[word[..<equals]] = word[word.index(after: equals)...]
        }
        guard let uuid = fields["uuid"], uuid.count == 36,
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
    public func changes(to later: FilesystemStamp) -> String {
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
