// The parsers of what others write, each behind one fuzz target: bytes in, an error or a value
// out, never a trap, a hang or unbounded memory. Built normally, `snapstack-fuzz TARGET FILE...`
// replays inputs (the committed corpora, in CI); built with `-sanitize=fuzzer -DFUZZING`
// (Tests/fuzz/run.sh), libFuzzer drives the target named by SNAPSTACK_FUZZ_TARGET.
import BlockIO
@_spi(Testing) import ChangeTracking
@_spi(Testing) import CopyEngine
import DeviceMapper
import Foundation
import Images
import Policy
import Snapstack
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

enum Harness: String, CaseIterable {
    /// A delta stream (its digests and checks recomputed), read to the end and applied to a
    /// sink that drops what it gets; its manifest decoded.
    case delta
    /// An image manifest (JSON).
    case manifest
    /// dm-era metadata (its block checksums recomputed), walked for every era the superblock names.
    case era
    /// Table lines and status lines of every target snapstack reads.
    case table
    case status
    /// The daemon's policy file (YAML).
    case policy
    /// A name template, expanded.
    case template
    /// A size, as the command line and the policy take them.
    case size
    /// A disk's first bytes as a filesystem stamp (what a rebuild reads before it stacks), and
    /// a stamp's line as the database keeps it: a stamp read must read back from its line.
    case stamp

    func run(_ input: [UInt8]) {
        switch self {
        case .delta:
            var bytes = input
            DeltaStreamFormat.reseal(&bytes)
            withScratchFile(bytes) { path in
                guard let fd = try? FileDescriptor.open(path, .readOnly) else { return }
                defer { try? fd.close() }
                guard let reader = try? DeltaStreamReader(descriptor: fd, name: "fuzz") else { return }
                _ = try? ImageManifest.decode(reader.header.payload, source: "fuzz")
                _ = try? reader.apply(to: NullSink())
            }
        case .manifest:
            _ = try? ImageManifest.decode(Data(input), source: "fuzz")
        case .era:
            var bytes = input
            resealEraMetadata(&bytes)
            withScratchFile(bytes) { path in
                guard let metadata = try? EraMetadata(path: path) else { return }
                _ = try? metadata.inventory()
                for era in [0, 1, 2, metadata.superblock.currentEra, .max] as [UInt32] {
                    _ = try? metadata.changedBlocks(since: era)
                }
            }
        case .table:
            _ = try? Table(parsing: String(decoding: input, as: UTF8.self))
        case .status:
            let text = String(decoding: input, as: UTF8.self)
            for line in text.split(separator: "\n") { _ = try? StatusLine(parsing: line) }
        case .policy:
            _ = try? Policy(parsing: String(decoding: input, as: UTF8.self), file: "fuzz")
        case .template:
            let text = String(decoding: input, as: UTF8.self)
            if let template = try? NameTemplate(text) {
                _ = template.expand(["ID_SERIAL": text, "ID_FS_LABEL": "data", "KERNEL": "sdb"])
            }
        case .size:
            _ = try? Bytes(parsing: String(decoding: input, as: UTF8.self))
        case .stamp:
            let line = FilesystemStamp(parsing: String(decoding: input, as: UTF8.self))
            if case .success(let stamp) = FilesystemStamp.read(input) {
                // The record's only reader is this parser: a stamp it cannot read back would
                // interrupt the tracking at every boot.
                guard FilesystemStamp(parsing: stamp.description) == stamp else {
                    fatalError("the stamp \(stamp) does not read back from its own line")
                }
                _ = stamp.changes(to: line ?? stamp)
            }
        }
    }

    /// Runs `body` on a file holding `bytes`, in /dev/shm where there is one: the readers take paths.
    private func withScratchFile(_ bytes: [UInt8], _ body: (FilePath) -> Void) {
        let directory = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let path = FilePath("\(directory)/snapstack-fuzz-\(getpid())")
        guard (try? Data(bytes).write(to: URL(fileURLWithPath: path.string))) != nil else { return }
        defer { unlink(path.string) }
        body(path)
    }
}

#if FUZZING
private let target: Harness = {
    let name = ProcessInfo.processInfo.environment["SNAPSTACK_FUZZ_TARGET"] ?? ""
    guard let harness = Harness(rawValue: name) else {
        FileHandle.standardError.write(Data("SNAPSTACK_FUZZ_TARGET must be one of: \(Harness.allCases.map(\.rawValue).joined(separator: " "))\n".utf8))
        exit(2)
    }
    return harness
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    target.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<CInt>,
                     _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// SwiftPM links an executable's entry point as `<module>_main`: here it hands over to libFuzzer.
@_cdecl("SnapstackFuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var vector = argv
    return runFuzzerDriver(&count, &vector, fuzzOneInput)
}
#else
/// The seeds of the two binary formats that only snapstack writes: a full and an incremental
/// delta stream (with data, zero runs and a short last block) and their manifests.
func makeSeeds(in directory: String) throws {
    let blockSize = 4096, deviceSize: UInt64 = 7 * 4096 + 1024
    let source = FilePath("\(directory)/source.tmp")
    var bytes = [UInt8](repeating: 0, count: Int(deviceSize))
    for index in bytes.indices where (index / blockSize) % 3 != 1 { bytes[index] = UInt8(truncatingIfNeeded: index &* 31 &+ 7) }
    try Data(bytes).write(to: URL(fileURLWithPath: source.string))
    defer { unlink(source.string) }
    for (name, base, extents) in [("full", nil, [Extent(offset: 0, length: deviceSize)]),
                                  ("incremental", "e0000001", [Extent(offset: 4096, length: 8192), Extent(offset: 24576, length: 5120)])]
        as [(String, String?, [Extent])] {
        let manifest = ImageManifest(
            state: .complete,
            export: .init(id: base == nil ? "e0000001" : "e0000002", kind: base == nil ? "full" : "incremental", base: base,
                          chain: base.map { [$0, "e0000002"] } ?? ["e0000001"], createdAt: Date(timeIntervalSince1970: 1_790_000_000),
                          completedAt: Date(timeIntervalSince1970: 1_790_000_060)),
            device: .init(id: "dev00001", name: "data", sizeBytes: deviceSize, serial: "QM00001"),
            snapshot: .init(id: "snap0001", name: "nightly", era: 4, createdAt: Date(timeIntervalSince1970: 1_790_000_000)),
            sinceEra: base == nil ? nil : 2, blockSize: blockSize, checksumFile: "data.img.sums")
        try manifest.encoded().write(to: URL(fileURLWithPath: "\(directory)/manifest/\(name).json"))
        let stream = FilePath("\(directory)/delta/\(name).delta")
        let fd = try FileDescriptor.open(stream, .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        defer { try? fd.close() }
        let writer = try DeltaStreamWriter(descriptor: fd, header: DeltaStreamHeader(
            blockSize: blockSize, deviceSize: deviceSize, payload: try manifest.encoded()))
        _ = try CopyEngine(source: source, options: CopyOptions(blockSize: blockSize)).run(extents: extents, into: writer)
        try writer.finish()
    }
}

@main
struct Replay {
    static func main() {
        var arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "--make-seeds", let directory = arguments.dropFirst().first {
            do { try makeSeeds(in: directory) } catch {
                FileHandle.standardError.write(Data("snapstack-fuzz: \(error)\n".utf8))
                exit(1)
            }
            return
        }
        guard let name = arguments.popFirst(), let harness = Harness(rawValue: name) else {
            FileHandle.standardError.write(Data("""
                usage: snapstack-fuzz TARGET FILE|DIRECTORY...
                       snapstack-fuzz --make-seeds CORPUS
                Runs each input through TARGET (\(Harness.allCases.map(\.rawValue).joined(separator: ", "))): \
                the replay of a fuzz corpus. Exits 0 when none trapped. --make-seeds writes the \
                delta and manifest seeds into CORPUS/delta and CORPUS/manifest.

                """.utf8))
            exit(2)
        }
        var count = 0
        for argument in arguments {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
                FileHandle.standardError.write(Data("snapstack-fuzz: \(argument) does not exist\n".utf8))
                exit(2)
            }
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []).sorted().map { argument + "/" + $0 }
                : [argument]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                harness.run([UInt8](data))
                count += 1
            }
        }
        print("\(harness.rawValue): \(count) input(s) replayed")
    }
}
#endif
