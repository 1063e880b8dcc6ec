// CopyBench: the copy-out core doing what an export does — read a device with the engine, write
// a sparse image, record every block's XXH3-128 digest in a sums file — so that
// Tests/bench/copy-out.sh can time it against dd and cp. Prints one JSON line of statistics.
import BlockIO
import CopyEngine
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

let usage = """
    Usage: CopyBench export --source DEV (--image IMG | --null) [--sums FILE] [--blocks FILE] [--punch-holes]
                            [--block-size 64K] [--io-size 4M] [--queue-depth 8] [--readers 4]
                            [--buffered] [--write-mode behind|buffered|direct]
                            [--progress auto|terminal|json|none]
    Copies DEV (all of it, or the blocks numbered in FILE, one per line) into the sparse image
    IMG (created, or with --punch-holes updated in place), writes "INDEX DIGEST" per block to
    the sums file, and prints the statistics as one JSON line. --null reads and digests only, as
    verify does. Without arguments it prints this and exits 64 (the benchmark uses that to load
    the binary into the page cache before timing it).
    """

func fail(_ message: String, status: Int32 = 1) -> Never {
    FileDescriptor.standardError.writeText("CopyBench: \(message)\n")
    exit(status)
}

extension FileDescriptor {
    func writeText(_ text: String) {
        _ = try? writeAll(text.utf8)
    }
}

/// Text written through a 1 MiB buffer.
final class BufferedOutput {
    let fd: FileDescriptor
    var buffer: [UInt8] = []
    init(_ fd: FileDescriptor) {
        self.fd = fd
        buffer.reserveCapacity(1 << 20)
    }
    func append(_ text: String) throws {
        buffer.append(contentsOf: text.utf8)
        if buffer.count >= 1 << 20 { try flush() }
    }
    func flush() throws {
        _ = try fd.writeAll(buffer)
        buffer.removeAll(keepingCapacity: true)
    }
}

var arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.first == "export" else { fail(usage, status: 64) }
arguments.removeFirst()
var values: [String: String] = [:]
var flags: Set<String> = []
while let argument = arguments.first {
    arguments.removeFirst()
    switch argument {
    case "--punch-holes", "--buffered", "--null": flags.insert(argument)
    case "--source", "--image", "--sums", "--blocks", "--block-size", "--io-size", "--queue-depth", "--readers", "--progress",
         "--write-mode":
        guard let value = arguments.first else { fail("\(argument) needs a value", status: 64) }
        arguments.removeFirst()
        values[argument] = value
    default: fail("unknown argument \(argument)\n\(usage)", status: 64)
    }
}
guard let source = values["--source"], values["--image"] != nil || flags.contains("--null") else { fail(usage, status: 64) }

@MainActor func size(_ name: String, _ fallback: UInt64) -> Int {
    guard let text = values[name] else { return Int(fallback) }
    do { return Int(try Bytes(parsing: text).rawValue) } catch { fail("\(name): \(error)", status: 64) }
}

var options = CopyOptions(blockSize: size("--block-size", 64 << 10))
options.ioSize = size("--io-size", UInt64(options.ioSize))
options.queueDepth = Int(values["--queue-depth"] ?? "\(options.queueDepth)") ?? options.queueDepth
options.readers = Int(values["--readers"] ?? "\(options.readers)") ?? options.readers
options.directIO = !flags.contains("--buffered")

do {
    let engine = try CopyEngine(source: FilePath(source), options: options)
    var extents = engine.wholeSource
    if let list = values["--blocks"] {
        let blocks = try readLines(list).compactMap { UInt64($0) }
        extents = Extent.ofBlocks(blocks, blockSize: options.blockSize, sourceSize: engine.sourceSize)
    }
    let sink: CopySink
    if let image = values["--image"] {
        let mode: SparseFileSink.WriteMode
        switch values["--write-mode"] ?? "behind" {
        case "behind": mode = .writeBehind
        case "buffered": mode = .buffered
        case "direct": mode = .direct
        default: fail("--write-mode takes behind, buffered or direct", status: 64)
        }
        sink = try SparseFileSink(path: FilePath(image), size: engine.sourceSize,
                                  zeroBlocks: flags.contains("--punch-holes") ? .punchHoles : .leaveHoles, writeMode: mode)
    } else {
        sink = NullSink()
    }
    var sums: BufferedOutput?
    if let path = values["--sums"] {
        sums = BufferedOutput(try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite]))
    }
    let style: ProgressReporter.Style
    switch values["--progress"] ?? "none" {
    case "auto": style = .automatic
    case "terminal": style = .terminal
    case "json": style = .jsonLines
    case "none": style = .silent
    default: fail("--progress takes auto, terminal, json or none", status: 64)
    }
    let reporter = ProgressReporter(style: style, label: "export")
    var last: CopyProgress?
    let statistics = try engine.run(extents: extents, into: sink, onBlock: { record in
        try sums?.append("\(record.index) \(record.digest.hex)\n")
    }, progress: { progress in
        last = progress
        reporter.report(progress)
    })
    let finishStart = SystemClock().now()
    try sink.finish()
    let finishSeconds = Double(SystemClock().now() - finishStart) / 1e9
    if let sums {
        try sums.flush()
        try sums.fd.close()
    }
    if let last { reporter.finish(last) }
    print("{\"seconds\":\(statistics.seconds),\"bytesRead\":\(statistics.bytesRead),\"bytesWritten\":\(statistics.bytesWritten),"
        + "\"zeroBytes\":\(statistics.zeroBytes),\"blocks\":\(statistics.blocks),\"reads\":\(statistics.reads),"
        + "\"directIO\":\(statistics.directIO),\"bufferBytes\":\(statistics.bufferBytes),\"punchedBytes\":\((sink as? SparseFileSink)?.bytesPunched ?? 0),"
        + "\"finishSeconds\":\(finishSeconds)}")
} catch {
    fail("\(error)")
}

/// The lines of a small text file.
func readLines(_ path: String) throws -> [Substring] {
    let fd = try FileDescriptor.open(path, .readOnly)
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    try fd.closeAfter {
        while true {
            let count = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
        }
    }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n")
}
