import CopyEngine
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

let block = 64 << 10

/// Data, a run of written zeros, data, a hole, data, zeros, a hole at the end, and a short
/// last block: every case the engine and the sinks tell apart.
let mixedKinds: [BlockKind] = [.data, .data, .zeros, .zeros, .zeros, .data, .hole, .hole, .data,
                               .zeros, .data, .hole, .hole, .hole, .data, .hole, .data]
let mixedSize = UInt64((mixedKinds.count - 1) * block + 1000)

@Suite("CopyEngine")
struct CopyEngineTests {
    @Test("block digests equal xxhsum -H2 of the same bytes; zero blocks and the short last block are recognised")
    func digestsMatchXxhsum() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: mixedKinds, size: mixedSize)
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: 256 << 10))
            var records: [BlockRecord] = []
            let statistics = try engine.run(extents: engine.wholeSource, into: NullSink()) { records.append($0) }

            // The witness: coreutils split cuts the file into blocks, xxhsum digests each.
            let pieces = directory.appending("pieces")
            try FileManager.default.createDirectory(atPath: pieces.string, withIntermediateDirectories: false)
            try run(["split", "-b", "\(block)", "-d", "-a", "4", source.string, pieces.string + "/b."])
            let names = try FileManager.default.contentsOfDirectory(atPath: pieces.string).sorted()
            let sums = try run(["xxhsum", "-H2"] + names.map { pieces.appending($0).string })
            let expected = sums.split(separator: "\n").map { String($0.prefix(32)) }

            #expect(records.count == mixedKinds.count)
            #expect(expected.count == mixedKinds.count)
            #expect(records.map(\.digest.hex) == expected)
            #expect(records.map(\.isZero) == mixedKinds.map { $0 != .data })
            #expect(records.map(\.index) == (0..<UInt64(mixedKinds.count)).map { $0 })
            #expect(records.map(\.offset) == (0..<UInt64(mixedKinds.count)).map { $0 * UInt64(block) })
            #expect(records.last?.length == 1000)
            #expect(statistics.blocks == UInt64(mixedKinds.count))
            #expect(statistics.bytesRead == mixedSize)
            let zeroBlocks = mixedKinds.dropLast().filter { $0 != .data }.count
            #expect(statistics.zeroBytes == UInt64(zeroBlocks * block))
            #expect(statistics.directIO == ddReadsDirect(source))
        }
    }

    @Test("a full copy into a sparse image has the source's bytes and holes where zeros were, whatever the write mode",
          arguments: [SparseFileSink.WriteMode.writeBehind, .buffered, .direct])
    func sparseImage(mode: SparseFileSink.WriteMode) throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            let image = directory.appending("image")
            try makeSource(source, blockSize: block, kinds: mixedKinds, size: mixedSize)
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: 128 << 10, queueDepth: 3))
            let sink = try SparseFileSink(path: image, size: engine.sourceSize, zeroBlocks: .leaveHoles, writeMode: mode)
            let statistics = try engine.run(extents: engine.wholeSource, into: sink)
            try sink.finish()
            // O_DIRECT on this file system, asked of dd, decides whether direct writes happen.
            #expect(sink.directWrites == (mode == .direct && ddReadsDirect(source)))

            #expect(try sha256(image) == sha256(source))
            let dataBlocks = mixedKinds.enumerated().filter { $0.element == .data }.map(\.offset)
            let dataBytes = UInt64((dataBlocks.count - 1) * block + 1000)
            #expect(statistics.bytesWritten == dataBytes)
            #expect(sink.bytesWritten == dataBytes)
            // Each data block is data to SEEK_DATA, each zero block a hole; runs of data merge.
            var expected: [Range<UInt64>] = []
            for index in dataBlocks {
                let start = UInt64(index * block)
                let end = min(start + UInt64(block), mixedSize)
                if let last = expected.last, last.upperBound == start {
                    expected[expected.count - 1] = last.lowerBound..<end
                } else {
                    expected.append(start..<end)
                }
            }
            let ranges = try dataRanges(image)
            // The file system may round the last data range up to its block size.
            #expect(ranges.dropLast() == expected.dropLast())
            #expect(ranges.last?.lowerBound == expected.last?.lowerBound)
            let allocated = try allocatedBytes(image)
            let layout = try dataRanges(image)
            // Data rounded up to file system blocks, plus room for an extent-tree block.
            #expect(allocated <= (dataBytes + 4095) / 4096 * 4096 + 2 * 4096, "\(allocated) bytes allocated for \(dataBytes) of data: \(layout)")
        }
    }

    @Test("an incremental copy reads only its extents, merges adjacent ones into one read, and punches blocks that became zero")
    func incrementalWithPunchedHoles() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            let image = directory.appending("image")
            try makeSource(source, blockSize: block, kinds: mixedKinds, size: mixedSize)
            do {
                let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
                let sink = try SparseFileSink(path: image, size: engine.sourceSize, zeroBlocks: .leaveHoles)
                _ = try engine.run(extents: engine.wholeSource, into: sink)
                try sink.finish()
            }
            // Change: block 0 becomes zero, 1 new data, 6 (a hole) data, 7 stays; 16 (short) new data.
            try rewriteBlock(source, blockSize: block, index: 0, kind: .zeros, seed: 10)
            try rewriteBlock(source, blockSize: block, index: 1, kind: .data, seed: 11)
            try rewriteBlock(source, blockSize: block, index: 6, kind: .data, seed: 12)
            let tail = try FileDescriptor.open(source, .writeOnly)
            _ = try tail.writeAll(toAbsoluteOffset: Int64(16 * block), randomBytes(seed: 13, count: 1000))
            try tail.close()
            #expect(try sha256(image) != sha256(source))
            let imageBefore = try allocatedBytes(image)

            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
            let extents = Extent.ofBlocks([6, 0, 1, 16], blockSize: block, sourceSize: engine.sourceSize)
            #expect(extents == [Extent(offset: 0, length: UInt64(2 * block)), Extent(offset: UInt64(6 * block), length: UInt64(block)),
                                Extent(offset: UInt64(16 * block), length: 1000)])
            let sink = try SparseFileSink(path: image, size: engine.sourceSize, zeroBlocks: .punchHoles)
            var seen: [UInt64] = []
            let statistics = try engine.run(extents: extents, into: sink) { seen.append($0.index) }
            try sink.finish()

            #expect(try sha256(image) == sha256(source))
            #expect(seen == [0, 1, 6, 16])
            #expect(statistics.reads == 3)
            #expect(statistics.bytesRead == UInt64(3 * block + 1000))
            #expect(sink.bytesPunched == UInt64(block))
            // Block 0 is a hole again: the first data starts at block 1.
            #expect(try dataRanges(image).first?.lowerBound == UInt64(block))
            // One block punched, one hole filled: the allocation is the same.
            #expect(try allocatedBytes(image) == imageBefore)
        }
    }

    @Test("a raw stream is every byte of the source, zeros and holes included, even when the extents skip the holes")
    func rawStream() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: mixedKinds + [.hole, .hole], size: mixedSize + UInt64(2 * block))
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: 128 << 10))
            // Only the first 11 blocks: the sink fills the rest with zeros up to the size.
            let extents = [Extent(offset: 0, length: UInt64(6 * block)), Extent(offset: UInt64(8 * block), length: UInt64(3 * block))]
            let pipe = Pipe()
            let checksum = Process()
            checksum.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            checksum.arguments = ["sha256sum"]
            checksum.standardInput = pipe.fileHandleForReading
            let output = Pipe()
            checksum.standardOutput = output
            try checksum.run()
            try pipe.fileHandleForReading.close()
            let writeEnd = FileDescriptor(rawValue: pipe.fileHandleForWriting.fileDescriptor)
            let sink = RawStreamSink(descriptor: writeEnd, name: "pipe", size: engine.sourceSize)
            _ = try engine.run(extents: extents, into: sink)
            try sink.finish()
            try pipe.fileHandleForWriting.close()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            checksum.waitUntilExit()

            // The source with blocks 6, 7 and everything from block 11 on read as zeros.
            var expected = try readAll(source)
            for index in [6, 7] { expected.replaceSubrange(index * block..<(index + 1) * block, with: [UInt8](repeating: 0, count: block)) }
            expected.replaceSubrange((11 * block)..., with: [UInt8](repeating: 0, count: expected.count - 11 * block))
            let reference = directory.appending("expected")
            try Data(expected).write(to: URL(fileURLWithPath: reference.string))
            #expect(String(text.prefix(64)) == (try sha256(reference)))
            #expect(sink.bytesWritten == engine.sourceSize)
        }
    }

    @Test("a raw stream whose reader went away fails with EPIPE and says so")
    func rawStreamBrokenPipe() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: [.data, .data, .data, .data])
            var ends: [Int32] = [0, 0]
            try #require(pipe(&ends) == 0)
            close(ends[0])
            defer { close(ends[1]) }
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
            let sink = RawStreamSink(descriptor: FileDescriptor(rawValue: ends[1]), name: "stdout")
            let error = try #require(throws: CopyError.self) {
                try engine.run(extents: engine.wholeSource, into: sink)
            }
            #expect(error.errno == .brokenPipe)
            #expect(error.operation == "write")
            #expect(error.offset == 0)
            #expect(error.description.contains("the reader closed the pipe"))
        }
    }

    @Test("re-reading the image verifies it: the digests of a second pass equal those of the copy (verify with a null sink)")
    func verifyPass() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            let image = directory.appending("image")
            try makeSource(source, blockSize: block, kinds: mixedKinds, size: mixedSize)
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
            let sink = try SparseFileSink(path: image, size: engine.sourceSize, zeroBlocks: .leaveHoles)
            var manifest: [Digest128] = []
            _ = try engine.run(extents: engine.wholeSource, into: sink) { manifest.append($0.digest) }
            try sink.finish()

            let verifier = try CopyEngine(source: image, options: CopyOptions(blockSize: block, ioSize: 192 << 10, queueDepth: 2, readers: 2))
            var mismatches: [UInt64] = []
            _ = try verifier.run(extents: verifier.wholeSource, into: NullSink()) { record in
                if manifest[Int(record.index)] != record.digest { mismatches.append(record.index) }
            }
            #expect(mismatches.isEmpty)

            // One flipped byte in block 8 is found there and nowhere else.
            let fd = try FileDescriptor.open(image, .readWrite)
            var byte: [UInt8] = [0]
            _ = try byte.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: Int64(8 * block + 77), into: $0) }
            _ = try fd.writeAll(toAbsoluteOffset: Int64(8 * block + 77), [byte[0] ^ 0x40])
            try fd.close()
            let again = try CopyEngine(source: image, options: CopyOptions(blockSize: block))
            _ = try again.run(extents: again.wholeSource, into: NullSink()) { record in
                if manifest[Int(record.index)] != record.digest { mismatches.append(record.index) }
            }
            #expect(mismatches == [8])
        }
    }

    @Test("buffered reads when asked: the same digests, and the statistics say directIO false")
    func bufferedWhenAsked() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: mixedKinds, size: mixedSize)
            var direct: [Digest128] = []
            var buffered: [Digest128] = []
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
            let first = try engine.run(extents: engine.wholeSource, into: NullSink()) { direct.append($0.digest) }
            let plain = try CopyEngine(source: source, options: CopyOptions(blockSize: block, directIO: false))
            let second = try plain.run(extents: plain.wholeSource, into: NullSink()) { buffered.append($0.digest) }
            #expect(direct == buffered)
            #expect(second.directIO == false)
            #expect(first.directIO == ddReadsDirect(source))
        }
    }

    @Test("a file system that refuses O_DIRECT (tmpfs before Linux 6.6) is read buffered, and the statistics say so")
    func tmpfsFallback() throws {
        // /dev/shm is tmpfs on every systemd machine; whether it takes O_DIRECT depends on the
        // kernel, so dd's answer is the witness the engine must agree with.
        var status = stat()
        try #require(stat("/dev/shm", &status) == 0, "/dev/shm is missing")
        var template = Array("/dev/shm/snapstack-copy-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        let directory = FilePath(String(cString: made!))
        defer { try? FileManager.default.removeItem(atPath: directory.string) }
        let source = directory.appending("source")
        try makeSource(source, blockSize: block, kinds: mixedKinds, size: mixedSize)
        let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
        let image = directory.appending("image")
        let sink = try SparseFileSink(path: image, size: engine.sourceSize, zeroBlocks: .leaveHoles)
        let statistics = try engine.run(extents: engine.wholeSource, into: sink)
        try sink.finish()
        #expect(statistics.directIO == ddReadsDirect(source))
        #expect(engine.directIO == statistics.directIO)
        #expect(try sha256(image) == sha256(source))
    }

    @Test("memory is queueDepth buffers of ioSize, whatever the size of the source")
    func boundedMemory() throws {
        try withTemporaryDirectory { directory in
            var seen: [(count: Int, bytes: Int)] = []
            for size in [UInt64(16 << 20), UInt64(256 << 20)] {
                let source = directory.appending("source-\(size)")
                let fd = try FileDescriptor.open(source, .writeOnly, options: [.create], permissions: [.ownerReadWrite])
                try fd.resize(to: Int64(size))
                _ = try fd.writeAll(toAbsoluteOffset: Int64(size) - 4096, randomBytes(seed: 5, count: 4096))
                try fd.close()
                let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: 256 << 10, queueDepth: 3, readers: 2))
                let statistics = try engine.run(extents: engine.wholeSource, into: NullSink())
                #expect(statistics.bytesRead == size)
                #expect(statistics.reads == Int(size / (256 << 10)))
                seen.append((statistics.bufferCount, statistics.bufferBytes))
            }
            #expect(seen.map(\.count) == [3, 3])
            #expect(seen.map(\.bytes) == [3 * (256 << 10), 3 * (256 << 10)])
        }
    }

    @Test("cancel stops the copy between I/Os with a cancellation error, long before the end")
    func cancel() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: Array(repeating: .data, count: 64))
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: block, queueDepth: 2))
            let flag = CancellationFlag()
            let sink = RecordingSink()
            var blocks = 0
            let error = try #require(throws: CopyError.self) {
                try engine.run(extents: engine.wholeSource, into: sink, onBlock: { _ in
                    blocks += 1
                    if blocks == 3 { flag.cancel() }
                }, cancel: flag)
            }
            #expect(error.isCancelled)
            #expect(error.description.contains("cancelled"))
            // The block that raised the flag is still written; the next one is not.
            #expect(sink.writes.count == 3)
            #expect(blocks == 3)

            let before = CancellationFlag()
            before.cancel()
            let early = try #require(throws: CopyError.self) {
                try engine.run(extents: engine.wholeSource, into: sink, cancel: before)
            }
            #expect(early.isCancelled)
            #expect(sink.writes.count == 3)
        }
    }

    @Test("a sink's failure stops the copy and comes back unchanged")
    func sinkFailure() throws {
        struct Refused: Error, Equatable {}
        final class FailingSink: CopySink {
            var calls = 0
            func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {
                calls += 1
                if calls == 2 { throw Refused() }
            }
            func finish() throws {}
        }
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: Array(repeating: .data, count: 32))
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: block))
            let sink = FailingSink()
            #expect(throws: Refused()) { try engine.run(extents: engine.wholeSource, into: sink) }
            #expect(sink.calls == 2)
        }
    }

    @Test("extents that are unaligned, overlapping, out of order or past the end are refused before any read")
    func invalidExtents() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: [.data, .data, .data, .data], size: UInt64(3 * block + 100))
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
            let b = UInt64(block)
            let cases: [([Extent], String)] = [
                ([Extent(offset: 512, length: b)], "does not start on a 65536-byte block boundary"),
                ([Extent(offset: 0, length: b + 512)], "does not end on a block boundary"),
                ([Extent(offset: b, length: b), Extent(offset: 0, length: b)], "out of order"),
                ([Extent(offset: 0, length: 2 * b), Extent(offset: b, length: b)], "overlaps"),
                ([Extent(offset: 3 * b, length: b)], "past the source's end"),
            ]
            for (extents, words) in cases {
                let sink = RecordingSink()
                let error = try #require(throws: CopyError.self) { try engine.run(extents: extents, into: sink) }
                #expect(error.description.contains(words), "\(extents): \(error)")
                #expect(sink.writes.isEmpty)
            }
            // The last extent may end at the source's end, mid-block.
            let sink = RecordingSink()
            _ = try engine.run(extents: [Extent(offset: 3 * b, length: 100)], into: sink)
            #expect(sink.writes.map(\.count) == [100])
        }
    }

    @Test("options the source cannot honour are refused at init")
    func invalidOptions() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: [.data])
            #expect(throws: CopyError.self) { try CopyEngine(source: source, options: CopyOptions(blockSize: 1000)) }
            #expect(throws: CopyError.self) { try CopyEngine(source: source, options: CopyOptions(blockSize: block, queueDepth: 0)) }
            #expect(throws: CopyError.self) { try CopyEngine(source: source, options: CopyOptions(blockSize: block, maxRate: 0)) }
            let missing = try #require(throws: CopyError.self) {
                try CopyEngine(source: directory.appending("missing"), options: CopyOptions(blockSize: block))
            }
            #expect(missing.errno == .noSuchFileOrDirectory)
            #expect(missing.operation == "open")
            let pipeError = try #require(throws: CopyError.self) {
                try CopyEngine(source: "/dev/null", options: CopyOptions(blockSize: block))
            }
            #expect(pipeError.reason == .unsupportedSource)
        }
    }

    @Test("with a rate limit the engine waits exactly what the token bucket computes (virtual clock)")
    func rateLimitedRun() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: Array(repeating: .data, count: 16))
            // 1 MiB at 256 KiB/s with reads of 256 KiB: the first read is the burst, the other
            // three wait one second each.
            var options = CopyOptions(blockSize: block, ioSize: 256 << 10, queueDepth: 2, readers: 1)
            options.maxRate = 256 << 10
            let clock = VirtualClock()
            let engine = try CopyEngine(source: source, options: options)
            engine.clock = clock
            let statistics = try engine.run(extents: engine.wholeSource, into: NullSink())
            #expect(statistics.bytesRead == 1 << 20)
            #expect(clock.totalSlept == 3_000_000_000)
            #expect(clock.slept.allSatisfy { $0 <= 50_000_000 })
        }
    }
}
