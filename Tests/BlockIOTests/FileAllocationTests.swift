import BlockIO
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it at the end.
func withTemporaryDirectory<T>(_ body: (FilePath) throws -> T) throws -> T {
    let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    var template = Array((base + "/snapstack-blockio-XXXXXX").utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    try #require(made != nil, "mkdtemp failed: \(Errno(rawValue: errno))")
    let directory = FilePath(String(cString: made!))
    defer {
        if let listing = opendir(directory.string) {
            while let entry = readdir(listing) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(directory.appending(name).string) }
            }
            closedir(listing)
        }
        rmdir(directory.string)
    }
    return try body(directory)
}

func fileStatus(_ path: FilePath) throws -> stat {
    var status = stat()
    try #require(stat(path.string, &status) == 0, "stat \(path): \(Errno(rawValue: errno))")
    return status
}

func fileBytes(_ path: FilePath) throws -> [UInt8] {
    Array(try readText(path).utf8)
}

@Suite("FileAllocation")
struct FileAllocationTests {
    @Test("create makes a file of the size asked, with the permissions asked")
    func size() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("disk.img")
            try FileAllocation.create(path, size: .mebibytes(3) + Bytes(512), preallocate: false)
            let status = try fileStatus(path)
            #expect(status.st_size == 3 << 20 + 512)
            #expect(status.st_mode & S_IFMT == S_IFREG)
            #expect(status.st_mode & 0o777 == 0o600)
        }
    }

    @Test("create of an empty file, with and without preallocation", arguments: [false, true])
    func empty(preallocate: Bool) throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("empty.img")
            try FileAllocation.create(path, size: .zero, preallocate: preallocate)
            #expect(try fileStatus(path).st_size == 0)
        }
    }

    @Test("create is exclusive: a second create fails with EEXIST and leaves the first file as it was")
    func exclusive() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("disk.img")
            try FileAllocation.create(path, size: .kibibytes(64), preallocate: false)
            let descriptor = try FileDescriptor.open(path, .writeOnly)
            try descriptor.closeAfter { _ = try descriptor.writeAll("first".utf8) }
            let before = try fileStatus(path)

            #expect(throws: BlockIOError(path: path, reason: .system(operation: "open (create exclusively)", .fileExists))) {
                try FileAllocation.create(path, size: .mebibytes(8), preallocate: true)
            }
            let after = try fileStatus(path)
            #expect(after.st_size == before.st_size)
            #expect(after.st_ino == before.st_ino)
            #expect(after.st_blocks == before.st_blocks)
            #expect(Array(try fileBytes(path).prefix(5)) == Array("first".utf8))
        }
    }

    @Test("create does not follow a symbolic link at the path")
    func symbolicLink() throws {
        try withTemporaryDirectory { directory in
            let target = directory.appending("target")
            let link = directory.appending("link")
            try #require(symlink(target.string, link.string) == 0)
            #expect(throws: BlockIOError(path: link, reason: .system(operation: "open (create exclusively)", .fileExists))) {
                try FileAllocation.create(link, size: .kibibytes(4), preallocate: false)
            }
            var status = stat()
            #expect(stat(target.string, &status) == -1 && errno == ENOENT)
        }
    }

    @Test("create with noCopyOnWrite: the file has the C attribute (lsattr) where chattr +C works, else the call fails and leaves no file")
    func noCopyOnWrite() throws {
        try withTemporaryDirectory { directory in
            // The witness: chattr itself, on a file of the same directory.
            let probe = directory.appending("probe")
            #expect(FileManager.default.createFile(atPath: probe.string, contents: nil))
            let chattr = try runTool("/usr/bin/chattr", ["+C", probe.string])
            let path = directory.appending("era.img")
            if chattr.status == 0 {
                try FileAllocation.create(path, size: .mebibytes(1), preallocate: true, noCopyOnWrite: true)
                let attributes = try runTool("/usr/bin/lsattr", ["-d", path.string]).stdout
                #expect(attributes.split(separator: " ").first?.contains("C") == true, "lsattr: \(attributes)")
            } else {
                let error = #expect(throws: BlockIOError.self) {
                    try FileAllocation.create(path, size: .mebibytes(1), preallocate: true, noCopyOnWrite: true)
                }
                #expect("\(error.map { "\($0)" } ?? "")".contains("chattr +C"))
                #expect(!FileManager.default.fileExists(atPath: path.string))
            }
        }
    }

    @Test("create in a missing directory names the path and open")
    func missingDirectory() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("no/such/dir/disk.img")
            #expect(throws: BlockIOError(path: path, reason: .system(operation: "open (create exclusively)", .noSuchFileOrDirectory))) {
                try FileAllocation.create(path, size: .kibibytes(4), preallocate: false)
            }
        }
    }

    @Test("without preallocation the file is sparse; with it every block is reserved")
    func sparseVersusPreallocated() throws {
        try withTemporaryDirectory { directory in
            let size = Bytes.mebibytes(4)
            let sparse = directory.appending("sparse.img")
            let full = directory.appending("full.img")
            try FileAllocation.create(sparse, size: size, preallocate: false)
            try FileAllocation.create(full, size: size, preallocate: true)
            // st_blocks counts 512-byte units whatever the file system's block size.
            let sparseBlocks = UInt64(try fileStatus(sparse).st_blocks)
            let fullBlocks = UInt64(try fileStatus(full).st_blocks)
            #expect(sparseBlocks == 0)
            #expect(fullBlocks * 512 >= size.rawValue)
            #expect(try fileStatus(full).st_size == 4 << 20)
            // Reserved blocks read back as zeros.
            #expect(try fileBytes(full).allSatisfy { $0 == 0 })
        }
    }

    /// The 4 KiB blocks of `path` that `filefrag -v` (e2fsprogs, through FIEMAP) reports in
    /// extents flagged "unwritten": reserved, never written.
    static func unwrittenBlocks(_ path: FilePath) throws -> Set<UInt64> {
        let (status, text, errors) = try runTool("/usr/sbin/filefrag", ["-v", "-b4096", path.string])
        try #require(status == 0, "filefrag -v \(path): \(text)\(errors)")
        var blocks = Set<UInt64>()
        // " ext:     logical_offset:        physical_offset: length:   expected: flags:"
        // "   0:        0..     255:      34816..     35071:    256:             unwritten"
        for line in text.split(separator: "\n") where line.contains("unwritten") {
            let logical = line.split(separator: ":")[1].split(separator: ".").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) }
            try #require(logical.count == 2, "filefrag line \(line)")
            blocks.formUnion(logical[0]...logical[1])
        }
        return blocks
    }

    /// Unwritten extents are what these tests witness (with filefrag), and only ext4 and xfs
    /// keep them — the file systems snapstack zero-fills on. `Tests/lab/test-all.sh` points
    /// TMPDIR at an ext4 mount when /tmp is something else, so here it is a failure, not a skip.
    static func requireExtentFileSystem(_ directory: FilePath) throws {
        let type = try FileSystemType(of: directory)
        try #require(type.overwritesInPlace, "\(directory) is on \(type), which keeps no unwritten extents; set TMPDIR to a directory on ext4 or xfs")
    }

    @Test("zeroFill writes zeros over the start of a new file: those blocks are written, the rest only reserved")
    func zeroFillCreate() throws {
        try withTemporaryDirectory { directory in
            try Self.requireExtentFileSystem(directory)
            let path = directory.appending("store.cow")
            try FileAllocation.create(path, size: .mebibytes(4), preallocate: true, zeroFill: .mebibytes(1) + Bytes(100))
            #expect(try fileStatus(path).st_size == 4 << 20)
            #expect(try fileBytes(path).allSatisfy { $0 == 0 })
            // The partial block past 1 MiB is left alone: direct I/O writes whole blocks.
            #expect(try Self.unwrittenBlocks(path) == Set(256..<1024))
            // Past the end of the file: only the file's size is written.
            let whole = directory.appending("metadata")
            try FileAllocation.create(whole, size: .mebibytes(1), preallocate: false, zeroFill: .mebibytes(8))
            #expect(try fileStatus(whole).st_size == 1 << 20)
            #expect(UInt64(try fileStatus(whole).st_blocks) * 512 >= 1 << 20)
            #expect(try Self.unwrittenBlocks(whole).isEmpty)
        }
    }

    @Test("grow with zeroFill writes zeros over the start of the new part only, never over the old")
    func zeroFillGrow() throws {
        try withTemporaryDirectory { directory in
            try Self.requireExtentFileSystem(directory)
            let path = directory.appending("store.cow")
            try FileAllocation.create(path, size: .mebibytes(1), preallocate: true)
            let descriptor = try FileDescriptor.open(path, .writeOnly)
            try descriptor.closeAfter { _ = try descriptor.writeAll(toAbsoluteOffset: 8192, "data".utf8) }
            try FileAllocation.grow(path, to: .mebibytes(3), preallocate: true, zeroFill: .mebibytes(1))
            let bytes = try fileBytes(path)
            #expect(bytes.count == 3 << 20)
            #expect(Array(bytes[8192..<8196]) == Array("data".utf8))
            #expect(bytes[..<8192].allSatisfy { $0 == 0 } && bytes[8196...].allSatisfy { $0 == 0 })
            let unwritten = try Self.unwrittenBlocks(path)
            #expect(unwritten.isDisjoint(with: 256..<512))
            #expect(unwritten.isSuperset(of: 512..<768))
            #expect(unwritten.isSuperset(of: 3..<256))   // the old part: reserved as it was
        }
    }

    @Test("isFullyWritten: only a file without holes or reserved-but-unwritten blocks, as filefrag sees it")
    func fullyWritten() throws {
        try withTemporaryDirectory { directory in
            try Self.requireExtentFileSystem(directory)
            let sparse = directory.appending("sparse"), reserved = directory.appending("reserved")
            let prefix = directory.appending("prefix"), whole = directory.appending("whole")
            let empty = directory.appending("empty")
            try FileAllocation.create(sparse, size: .mebibytes(2), preallocate: false)
            try FileAllocation.create(reserved, size: .mebibytes(2), preallocate: true)
            try FileAllocation.create(prefix, size: .mebibytes(2), preallocate: true, zeroFill: .mebibytes(1))
            try FileAllocation.create(whole, size: .mebibytes(2), preallocate: true, zeroFill: .mebibytes(2))
            try FileAllocation.create(empty, size: .zero, preallocate: false)
            #expect(try !FileAllocation.isFullyWritten(sparse))
            #expect(try FileAllocation.isFullyWritten(empty))
            #expect(try !FileAllocation.isFullyWritten(reserved))
            #expect(try !FileAllocation.isFullyWritten(prefix))
            #expect(try FileAllocation.isFullyWritten(whole))
            #expect(try Self.unwrittenBlocks(whole).isEmpty && !Self.unwrittenBlocks(prefix).isEmpty)
            // A hole punched into a written file.
            let descriptor = try FileDescriptor.open(whole, .readWrite)
            try descriptor.closeAfter { _ = try descriptor.writeAll(toAbsoluteOffset: 0, [1, 2, 3]) }
            #expect(try FileAllocation.isFullyWritten(whole))
            try FileAllocation.grow(whole, to: .mebibytes(3), preallocate: false)
            #expect(try !FileAllocation.isFullyWritten(whole))
        }
    }

    @Test("grow extends a sparse file and keeps its data")
    func growSparse() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("disk.img")
            try FileAllocation.create(path, size: .kibibytes(64), preallocate: false)
            let descriptor = try FileDescriptor.open(path, .writeOnly)
            try descriptor.closeAfter { _ = try descriptor.writeAll("data".utf8) }

            try FileAllocation.grow(path, to: .mebibytes(2), preallocate: false)
            let status = try fileStatus(path)
            #expect(status.st_size == 2 << 20)
            #expect(UInt64(status.st_blocks) * 512 < 1 << 20)
            #expect(Array(try fileBytes(path).prefix(4)) == Array("data".utf8))
        }
    }

    @Test("grow with preallocation reserves the whole file, old holes included")
    func growPreallocated() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("disk.img")
            try FileAllocation.create(path, size: .mebibytes(1), preallocate: false)
            try FileAllocation.grow(path, to: .mebibytes(3), preallocate: true)
            let status = try fileStatus(path)
            #expect(status.st_size == 3 << 20)
            #expect(UInt64(status.st_blocks) * 512 >= 3 << 20)
        }
    }

    @Test("grow to the same size is allowed; to a smaller one is refused and changes nothing")
    func growNeverShrinks() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("disk.img")
            try FileAllocation.create(path, size: .mebibytes(2), preallocate: false)
            try FileAllocation.grow(path, to: .mebibytes(2), preallocate: false)
            #expect(throws: BlockIOError(path: path, reason: .wouldShrink(current: .mebibytes(2), requested: .mebibytes(1)))) {
                try FileAllocation.grow(path, to: .mebibytes(1), preallocate: true)
            }
            let status = try fileStatus(path)
            #expect(status.st_size == 2 << 20)
            #expect(status.st_blocks == 0)
        }
    }

    @Test("grow of a missing file names the path and open")
    func growMissing() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("missing.img")
            #expect(throws: BlockIOError(path: path, reason: .system(operation: "open", .noSuchFileOrDirectory))) {
                try FileAllocation.grow(path, to: .mebibytes(1), preallocate: false)
            }
            var status = stat()
            #expect(stat(path.string, &status) == -1)
        }
    }

    /// No file system here can hold 4 EiB: ext4 refuses the size in ftruncate (EFBIG, above
    /// 16 TiB), tmpfs, xfs and btrfs accept the sparse size and refuse the reservation in
    /// fallocate (ENOSPC) before allocating anything. Either way the create fails half-way.
    @Test("a create that fails half-way removes the half-made file")
    func failedCreateRemovesTheFile() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("too-big.img")
            let error = try #require(throws: BlockIOError.self) {
                try FileAllocation.create(path, size: Bytes(1 << 62), preallocate: true)
            }
            let expected: [BlockIOError.Reason] = [
                .system(operation: "ftruncate", .fileTooLarge),
                .system(operation: "fallocate", .noSpace),
                .system(operation: "fallocate", .fileTooLarge),
            ]
            #expect(expected.contains(error.reason), "\(error)")
            #expect(error.leftOver == nil)
            var status = stat()
            #expect(stat(path.string, &status) == -1 && errno == ENOENT)
        }
    }

    @Test("sizes beyond off_t are refused before touching the disk")
    func tooLarge() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("huge.img")
            let size = Bytes(UInt64(Int64.max) + 1)
            #expect(throws: BlockIOError(path: path, reason: .sizeOutOfRange(size))) {
                try FileAllocation.create(path, size: size, preallocate: false)
            }
            var status = stat()
            #expect(stat(path.string, &status) == -1)
        }
    }

    @Test("errors say which file and which call failed")
    func descriptions() {
        let error = BlockIOError(path: "/srv/a.img", reason: .system(operation: "fallocate", .noSpace),
                                        leftOver: "unlink of the half-made file failed: Permission denied")
        #expect(error.errno == .noSpace)
        #expect("\(error)".hasPrefix("/srv/a.img: fallocate failed: "))
        #expect("\(error)".contains("undoing it failed too: unlink"))
    }
}

/// Runs a tool, returning its exit status and what it printed on stdout and stderr.
func runTool(_ executable: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let output = Pipe(), errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self), String(decoding: errorData, as: UTF8.self))
}
