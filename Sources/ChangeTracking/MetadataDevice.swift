import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// dm-era's metadata block: `DM_ERA_METADATA_BLOCK_SIZE` in dm-era-target.c. Every structure
/// (superblock, btree node, array block) is one such block.
let metadataBlockSize = 4096

/// One metadata block, copied out of the aligned read buffer. Fields are little-endian and not
/// necessarily aligned (the era superblock is packed).
struct MetadataBlock: Sendable {
    let location: UInt64
    let bytes: [UInt8]

    func u32(_ offset: Int) -> UInt32 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian }
    }

    func u64(_ offset: Int) -> UInt64 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self).littleEndian }
    }

    /// The checksum stored in the first four bytes of every persistent-data block.
    var storedChecksum: UInt32 { u32(0) }

    func computedChecksum(_ kind: BlockKind) -> UInt32 {
        bytes.withUnsafeBytes { Checksum.block($0, kind: kind) }
    }
}

/// The open metadata device or file and the one aligned buffer that O_DIRECT reads land in,
/// both released in deinit.
struct MetadataDevice: ~Copyable {
    let path: FilePath
    let descriptor: FileDescriptor
    /// Whether reads bypass the page cache. The kernel writes metadata through its own buffer
    /// layer (dm-bufio), which does not update the block device's page cache, so a buffered
    /// read of a device can return blocks older than what the kernel has committed.
    let directIO: Bool
    let blockCount: UInt64
    private let buffer: UnsafeMutableRawBufferPointer

    /// `open(2)` read-only with `O_DIRECT`, or without it where the file system refuses it
    /// (EINVAL: tmpfs in Linux 6.1 and other file systems without direct I/O); the size comes
    /// from `lseek(2)` to the end, which works for block devices and files alike.
    init(path: FilePath) throws(EraMetadataError) {
        self.path = path
        var direct = true
        var fd = Self.open(path, O_RDONLY | O_CLOEXEC | snapstack_O_DIRECT)
        if case .failure(.invalidArgument) = fd {
            direct = false
            fd = Self.open(path, O_RDONLY | O_CLOEXEC)
        }
        let descriptor: FileDescriptor
        switch fd {
        case .success(let opened): descriptor = opened
        case .failure(let errno): throw EraMetadataError(path: path, reason: .open(errno))
        }
        let end = lseek(descriptor.rawValue, 0, SEEK_END)
        if end < 0 {
            let errno = Errno(rawValue: Glibc.errno)
            _ = close(descriptor.rawValue)  // read-only: nothing to lose at close
            throw EraMetadataError(path: path, reason: .size(errno))
        }
        if end < metadataBlockSize {
            _ = close(descriptor.rawValue)
            throw EraMetadataError(path: path, reason: .tooSmall(bytes: UInt64(end)))
        }
        self.descriptor = descriptor
        self.directIO = direct
        self.blockCount = UInt64(end) / UInt64(metadataBlockSize)
        // O_DIRECT wants the buffer aligned to the device's logical block size, which is at most
        // a page on Linux; a page-aligned buffer suits every device.
        buffer = .allocate(byteCount: metadataBlockSize, alignment: metadataBlockSize)
    }

    deinit {
        buffer.deallocate()
        // Never retried: Linux releases the descriptor even when close reports EINTR.
        _ = close(descriptor.rawValue)
    }

    private static func open(_ path: FilePath, _ flags: Int32) -> Result<FileDescriptor, Errno> {
        while true {
            let fd = path.withPlatformString { Glibc.open($0, flags) }
            if fd >= 0 { return .success(FileDescriptor(rawValue: fd)) }
            let errno = Errno(rawValue: Glibc.errno)
            if errno != .interrupted { return .failure(errno) }
        }
    }

    /// `pread(2)` of block `location`, where a `structure` is expected; a location past
    /// the end of the device is reported as such rather than as a failed read.
    func read(_ location: UInt64, as structure: EraStructure) throws(EraMetadataError) -> MetadataBlock {
        guard location < blockCount else {
            throw EraMetadataError(path: path, reason: .outOfRange(structure, block: location, metadataBlocks: blockCount))
        }
        var done = 0
        while done < metadataBlockSize {
            let offset = off_t(location) * off_t(metadataBlockSize) + off_t(done)
            let count = pread(descriptor.rawValue, buffer.baseAddress! + done, metadataBlockSize - done, offset)
            if count < 0 {
                let errno = Errno(rawValue: Glibc.errno)
                if errno == .interrupted { continue }
                throw EraMetadataError(path: path, reason: .read(block: location, errno))
            }
            if count == 0 {
                throw EraMetadataError(path: path, reason: .shortRead(block: location, bytes: done))
            }
            done += count
        }
        return MetadataBlock(location: location, bytes: Array(buffer))
    }
}
