import CopyEngine
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it at the end.
/// Whether the tests that bind loop devices run: as root, or whenever
/// `SNAPSTACK_REQUIRE_ROOT_TESTS=1` (which `Tests/lab/test-all.sh` sets), so that a CI run without
/// root fails them instead of skipping them.
let rootTestsRun = geteuid() == 0 || ProcessInfo.processInfo.environment["SNAPSTACK_REQUIRE_ROOT_TESTS"] == "1"

func withTemporaryDirectory<T>(_ body: (FilePath) throws -> T) throws -> T {
    let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    var template = Array((base + "/snapstack-copy-XXXXXX").utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    try #require(made != nil, "mkdtemp failed: \(Errno(rawValue: errno))")
    let directory = FilePath(String(cString: made!))
    defer { try? FileManager.default.removeItem(atPath: directory.string) }
    return try body(directory)
}

/// What a block of a test source holds.
enum BlockKind: Hashable {
    case data, zeros, hole
}

/// A deterministic byte generator (SplitMix64), so every run makes the same sources.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func fill(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { raw in
            var position = 0
            while position + 8 <= count {
                raw.storeBytes(of: next(), toByteOffset: position, as: UInt64.self)
                position += 8
            }
            while position < count {
                raw[position] = UInt8(truncatingIfNeeded: next())
                position += 1
            }
        }
        // A data block must not be all zero by accident; it practically never is, but make sure.
        if count > 0 && bytes.allSatisfy({ $0 == 0 }) { bytes[0] = 1 }
        return bytes
    }
}

func randomBytes(seed: UInt64, count: Int) -> [UInt8] {
    var generator = SplitMix64(state: seed)
    return generator.fill(count)
}

/// Writes a test source: `kinds[i]` says what block i holds (random data, written zeros, or a
/// hole never written); the file is `size` bytes long, so the last block may be short.
func makeSource(_ path: FilePath, blockSize: Int, kinds: [BlockKind], size: UInt64? = nil, seed: UInt64 = 1) throws {
    let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite])
    defer { try? fd.close() }
    let total = size ?? UInt64(kinds.count * blockSize)
    try fd.resize(to: Int64(total))
    var random = SplitMix64(state: seed)
    for (index, kind) in kinds.enumerated() {
        let offset = UInt64(index * blockSize)
        guard offset < total else { break }
        let length = Int(min(UInt64(blockSize), total - offset))
        switch kind {
        case .data: _ = try fd.writeAll(toAbsoluteOffset: Int64(offset), random.fill(length))
        case .zeros: _ = try fd.writeAll(toAbsoluteOffset: Int64(offset), [UInt8](repeating: 0, count: length))
        case .hole: break
        }
    }
}

/// Overwrites block `index` of an existing file with `kind` (a hole is punched with fallocate).
func rewriteBlock(_ path: FilePath, blockSize: Int, index: Int, kind: BlockKind, seed: UInt64) throws {
    let fd = try FileDescriptor.open(path, .writeOnly)
    defer { try? fd.close() }
    var random = SplitMix64(state: seed)
    let offset = Int64(index * blockSize)
    switch kind {
    case .data: _ = try fd.writeAll(toAbsoluteOffset: offset, random.fill(blockSize))
    case .zeros: _ = try fd.writeAll(toAbsoluteOffset: offset, [UInt8](repeating: 0, count: blockSize))
    case .hole:
        try run(["fallocate", "--punch-hole", "--offset", "\(offset)", "--length", "\(blockSize)", path.string])
    }
}

func readAll(_ path: FilePath) throws -> [UInt8] {
    Array(try Data(contentsOf: URL(fileURLWithPath: path.string)))
}

func copyFile(_ from: FilePath, _ to: FilePath) throws {
    try run(["cp", "--sparse=always", from.string, to.string])
}

/// Runs a program (found on PATH) and returns its standard output; fails the test when it
/// cannot start or exits non-zero.
@discardableResult
func run(_ arguments: [String], input: FileHandle? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    if let input { process.standardInput = input }
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    try #require(process.terminationStatus == 0, "\(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
    return String(decoding: data, as: UTF8.self)
}

/// `sha256sum FILE`: the independent witness of a file's content.
func sha256(_ path: FilePath) throws -> String {
    String(try run(["sha256sum", path.string]).prefix(64))
}

/// `stat -c %b`: 512-byte blocks the file system allocated to a file.
func allocatedBytes(_ path: FilePath) throws -> UInt64 {
    var status = stat()
    try #require(stat(path.string, &status) == 0)
    return UInt64(status.st_blocks) * 512
}

/// The data ranges of a file as `lseek(SEEK_DATA/SEEK_HOLE)` reports them.
func dataRanges(_ path: FilePath) throws -> [Range<UInt64>] {
    let fd = open(path.string, O_RDONLY)
    try #require(fd >= 0)
    defer { close(fd) }
    var status = stat()
    fstat(fd, &status)
    let size = off_t(status.st_size)
    var ranges: [Range<UInt64>] = []
    var position: off_t = 0
    while position < size {
        let data = lseek(fd, position, 3)  // SEEK_DATA
        if data < 0 { break }  // ENXIO: no data after position
        let hole = lseek(fd, data, 4)      // SEEK_HOLE
        ranges.append(UInt64(data)..<UInt64(hole))
        position = hole
    }
    return ranges
}

/// Collects what the engine hands a sink, and forwards to another sink if given.
final class RecordingSink: CopySink {
    var writes: [(offset: UInt64, count: Int, blocks: [BlockRecord])] = []
    let next: CopySink?
    init(forwardingTo next: CopySink? = nil) { self.next = next }
    func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {
        writes.append((offset, bytes.count, blocks))
        try next?.write(offset: offset, bytes: bytes, blocks: blocks)
    }
    func finish() throws { try next?.finish() }
    var bytesWritten: UInt64 { next?.bytesWritten ?? 0 }
}

/// A clock whose time moves only when someone sleeps on it: waits are recorded, not spent.
final class VirtualClock: CopyClock, @unchecked Sendable {
    private let lock = NSLock()
    private var time: UInt64
    private var sleeps: [UInt64] = []
    init(start: UInt64 = 1_000_000_000) { time = start }
    func now() -> UInt64 { lock.withLock { time } }
    func sleep(nanoseconds: UInt64) { lock.withLock { time += nanoseconds; sleeps.append(nanoseconds) } }
    func advance(_ nanoseconds: UInt64) { lock.withLock { time += nanoseconds } }
    var slept: [UInt64] { lock.withLock { sleeps } }
    var totalSlept: UInt64 { slept.reduce(0, +) }
}

/// Whether O_DIRECT reads work for `path`, asked of `dd iflag=direct` (the independent witness).
func ddReadsDirect(_ path: FilePath) -> Bool {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["dd", "if=\(path.string)", "of=/dev/null", "iflag=direct", "bs=4096", "count=1", "status=none"]
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return false }
    process.waitUntilExit()
    return process.terminationStatus == 0
}
