import CopyEngine
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A source, a base image of it, the source changed afterwards, and the changed extents.
struct DeltaFixture {
    let source: FilePath
    let base: FilePath
    let extents: [Extent]
    let size: UInt64

    /// Blocks 0 data→zeros, 1 data→data, 6 hole→data, 9 zeros→data, 10 data→hole, 14 data→data,
    /// 16 (short) data→data; 2 and 3 listed as changed but unchanged (zeros).
    static let changed: [UInt64] = [0, 1, 2, 3, 6, 9, 10, 14, 16]

    init(_ directory: FilePath) throws {
        source = directory.appending("source")
        base = directory.appending("base")
        size = mixedSize
        try makeSource(source, blockSize: block, kinds: mixedKinds, size: size)
        let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
        let sink = try SparseFileSink(path: base, size: engine.sourceSize, zeroBlocks: .leaveHoles)
        _ = try engine.run(extents: engine.wholeSource, into: sink)
        try sink.finish()
        try rewriteBlock(source, blockSize: block, index: 0, kind: .zeros, seed: 20)
        try rewriteBlock(source, blockSize: block, index: 1, kind: .data, seed: 21)
        try rewriteBlock(source, blockSize: block, index: 6, kind: .data, seed: 22)
        try rewriteBlock(source, blockSize: block, index: 9, kind: .data, seed: 23)
        try rewriteBlock(source, blockSize: block, index: 10, kind: .hole, seed: 24)
        try rewriteBlock(source, blockSize: block, index: 14, kind: .data, seed: 25)
        let fd = try FileDescriptor.open(source, .writeOnly)
        _ = try fd.writeAll(toAbsoluteOffset: Int64(16 * block), randomBytes(seed: 26, count: 1000))
        try fd.close()
        extents = Extent.ofBlocks(DeltaFixture.changed, blockSize: block, sourceSize: size)
    }

    /// Writes the delta of the changed extents to `path` and returns the writer.
    @discardableResult
    func writeDelta(_ path: FilePath, payload: Data = Data("{\"export\":\"e-2\"}".utf8)) throws -> DeltaStreamWriter {
        let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: 128 << 10))
        let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite])
        defer { try? fd.close() }
        let writer = try DeltaStreamWriter(descriptor: fd, header: DeltaStreamHeader(blockSize: block, deviceSize: size, payload: payload),
                                           name: path.string)
        _ = try engine.run(extents: extents, into: writer)
        try writer.finish()
        return writer
    }
}

/// Reads a whole delta stream file, returning its records and summary, or throwing its error.
func readDelta(_ path: FilePath) throws -> (DeltaStreamHeader, [DeltaRecord], DeltaStreamSummary) {
    let fd = try FileDescriptor.open(path, .readOnly)
    defer { try? fd.close() }
    let reader = try DeltaStreamReader(descriptor: fd, name: path.string)
    var records: [DeltaRecord] = []
    let summary = try reader.forEach { record, _ in records.append(record) }
    return (reader.header, records, summary)
}

func streamError(_ path: FilePath) throws -> CopyError {
    try #require(throws: CopyError.self) { _ = try readDelta(path) }
}

/// Where each record starts in the stream, from the layout in DeltaStream.swift.
func recordOffsets(_ records: [DeltaRecord], payloadCount: Int) -> [UInt64] {
    var offset = UInt64(40 + payloadCount + 16)
    var offsets: [UInt64] = []
    for record in records {
        offsets.append(offset)
        offset += 56 + (record.kind == .data ? record.length : 0)
    }
    offsets.append(offset)  // the end record
    return offsets
}

func mutate(_ path: FilePath, _ change: (inout [UInt8]) -> Void) throws {
    var bytes = try readAll(path)
    change(&bytes)
    try Data(bytes).write(to: URL(fileURLWithPath: path.string))
}

@Suite("DeltaStream")
struct DeltaStreamTests {
    @Test("writer → reader → apply gives the same image as the direct incremental copy, and the source's bytes")
    func roundTrip() throws {
        try withTemporaryDirectory { directory in
            let fixture = try DeltaFixture(directory)
            let delta = directory.appending("delta")
            let writer = try fixture.writeDelta(delta)

            let direct = directory.appending("direct")
            try copyFile(fixture.base, direct)
            let engine = try CopyEngine(source: fixture.source, options: CopyOptions(blockSize: block))
            let directSink = try SparseFileSink(path: direct, size: fixture.size, zeroBlocks: .punchHoles)
            var directBlocks: [BlockRecord] = []
            _ = try engine.run(extents: fixture.extents, into: directSink) { directBlocks.append($0) }
            try directSink.finish()

            let applied = directory.appending("applied")
            try copyFile(fixture.base, applied)
            let fd = try FileDescriptor.open(delta, .readOnly)
            let reader = try DeltaStreamReader(descriptor: fd, name: delta.string)
            #expect(reader.header.payload == Data("{\"export\":\"e-2\"}".utf8))
            #expect(reader.header.blockSize == block)
            #expect(reader.header.deviceSize == fixture.size)
            #expect(reader.header.version == 1)
            let sink = try SparseFileSink(path: applied, size: reader.header.deviceSize, zeroBlocks: .punchHoles)
            var appliedBlocks: [BlockRecord] = []
            let summary = try reader.apply(to: sink) { appliedBlocks.append($0) }
            try sink.finish()
            try fd.close()

            let sourceHash = try sha256(fixture.source)
            #expect(try sha256(direct) == sourceHash)
            #expect(try sha256(applied) == sourceHash)
            #expect(try dataRanges(applied) == (try dataRanges(direct)))
            // The same blocks, with the same digests and zero flags, in the same order.
            #expect(appliedBlocks == directBlocks)
            // Records: data 1, 6, 9, 14, 16; zero runs 0 and 2-3 (adjacent: one run 2..3), 10.
            let dataBlocks = directBlocks.filter { !$0.isZero }
            #expect(summary.dataBytes == dataBlocks.reduce(0) { $0 + UInt64($1.length) })
            #expect(summary.totalBytes == fixture.extents.reduce(0) { $0 + $1.length })
            let (_, records, _) = try readDelta(delta)
            #expect(records.map(\.kind) == [.zero, .data, .zero, .data, .data, .zero, .data, .data])
            #expect(records.map { $0.offset / UInt64(block) } == [0, 1, 2, 6, 9, 10, 14, 16])
            #expect(records[2].length == UInt64(2 * block))
            #expect(summary.records == UInt64(records.count))
            #expect(writer.recordCount == UInt64(records.count))
            // The data digests in the stream are the blocks' XXH3-128.
            #expect(records.filter { $0.kind == .data }.map(\.digest!) == dataBlocks.map(\.digest))
        }
    }

    @Test("a stream cut at a record boundary, inside a record header or inside data is truncated, naming the record")
    func truncation() throws {
        try withTemporaryDirectory { directory in
            let fixture = try DeltaFixture(directory)
            let delta = directory.appending("delta")
            try fixture.writeDelta(delta)
            let (header, records, _) = try readDelta(delta)
            let offsets = recordOffsets(records, payloadCount: header.payload.count)
            let whole = try readAll(delta)
            #expect(UInt64(whole.count) == offsets.last! + 56)

            let cut = directory.appending("cut")
            // Without the end record: every record read, then the stream stops.
            try Data(whole[..<Int(offsets.last!)]).write(to: URL(fileURLWithPath: cut.string))
            var error = try streamError(cut)
            #expect(error.reason == .truncatedStream(record: UInt64(records.count),
                                                      what: "the stream ends after \(records.count) records without an end record"))
            #expect(error.offset == offsets.last!)
            // Inside the data of record 3 (a data record).
            #expect(records[3].kind == .data)
            try Data(whole[..<Int(offsets[3] + 56 + 100)]).write(to: URL(fileURLWithPath: cut.string))
            error = try streamError(cut)
            #expect(error.reason == .truncatedStream(record: 3, what: "the stream ends inside the data of record 3 (100 of 65536 bytes)"))
            // Inside the header of record 5.
            try Data(whole[..<Int(offsets[5] + 20)]).write(to: URL(fileURLWithPath: cut.string))
            error = try streamError(cut)
            #expect(error.reason == .truncatedStream(record: 5, what: "the stream ends inside the header of record 5"))
            #expect(error.description.contains("truncated delta stream"))
            // Inside the stream header.
            try Data(whole[..<30]).write(to: URL(fileURLWithPath: cut.string))
            error = try streamError(cut)
            guard case .corruptStream(record: nil, let what) = error.reason else {
                Issue.record("expected a damaged header, got \(error)")
                return
            }
            #expect(what.contains("ends inside its header"))
        }
    }

    @Test("damage to a record header, to data, to the stream header, a lost record and trailing bytes are each detected and named")
    func corruption() throws {
        try withTemporaryDirectory { directory in
            let fixture = try DeltaFixture(directory)
            let delta = directory.appending("delta")
            try fixture.writeDelta(delta)
            let (header, records, _) = try readDelta(delta)
            let offsets = recordOffsets(records, payloadCount: header.payload.count).map { Int($0) }
            let original = try readAll(delta)
            let damaged = directory.appending("damaged")
            func check(_ change: (inout [UInt8]) -> Void) throws -> CopyError {
                var bytes = original
                change(&bytes)
                try Data(bytes).write(to: URL(fileURLWithPath: damaged.string))
                return try streamError(damaged)
            }

            // A bit of record 4's offset field.
            var error = try check { $0[offsets[4] + 23] ^= 0x01 }
            guard case .corruptStream(record: 4, let what) = error.reason else { Issue.record("\(error)"); return }
            #expect(what.contains("check fails"))
            #expect(error.offset == UInt64(offsets[4]))
            // A byte of record 3's data.
            error = try check { $0[offsets[3] + 56 + 1234] ^= 0xff }
            guard case .corruptStream(record: 3, let dataWhat) = error.reason else { Issue.record("\(error)"); return }
            #expect(dataWhat.contains("digest"))
            #expect(dataWhat.contains("device offset \(records[3].offset)"))
            // Record 2 cut out: record 3 now follows record 1, and its chained check fails.
            error = try check { $0.removeSubrange(offsets[2]..<offsets[3]) }
            guard case .corruptStream(record: 2, _) = error.reason else { Issue.record("\(error)"); return }
            // The payload.
            error = try check { $0[45] ^= 0x20 }
            guard case .corruptStream(record: nil, let headerWhat) = error.reason else { Issue.record("\(error)"); return }
            #expect(headerWhat.contains("header digest"))
            // The magic.
            error = try check { $0[0] = UInt8(ascii: "X") }
            #expect(error.description.contains("not a snapstack delta stream"))
            // Bytes after the end record.
            error = try check { $0.append(0) }
            guard case .corruptStream(record: UInt64(records.count), let trailing) = error.reason else { Issue.record("\(error)"); return }
            #expect(trailing.contains("follow the end record"))
            // Nothing damaged: it reads.
            try Data(original).write(to: URL(fileURLWithPath: damaged.string))
            #expect(try readDelta(damaged).1 == records)
        }
    }

    @Test("a delta stream goes through a pipe and applies to a block-device sink (on a regular file: zeros are written)")
    func throughPipeToBlockDeviceSink() throws {
        try withTemporaryDirectory { directory in
            let fixture = try DeltaFixture(directory)
            let target = directory.appending("target")
            try copyFile(fixture.base, target)
            var ends: [Int32] = [0, 0]
            try #require(pipe(&ends) == 0)
            let readEnd = FileDescriptor(rawValue: ends[0])
            let writeEnd = FileDescriptor(rawValue: ends[1])
            let source = fixture.source
            let extents = fixture.extents
            let size = fixture.size
            // The writer runs on its own thread; the pipe holds far less than the stream.
            let writerDone = DispatchSemaphore(value: 0)
            let failure = NSLock()
            nonisolated(unsafe) var writerError: (any Error)?
            Thread.detachNewThread {
                defer { try? writeEnd.close(); writerDone.signal() }
                do {
                    let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block))
                    let writer = try DeltaStreamWriter(descriptor: writeEnd, header: DeltaStreamHeader(blockSize: block, deviceSize: size, payload: Data()), name: "pipe")
                    _ = try engine.run(extents: extents, into: writer)
                    try writer.finish()
                } catch {
                    failure.withLock { writerError = error }
                }
            }
            let reader = try DeltaStreamReader(descriptor: readEnd, name: "pipe")
            let sink = try BlockDeviceSink(path: target, exclusive: false)
            let summary = try reader.apply(to: sink)
            try sink.finish()
            writerDone.wait()
            try readEnd.close()
            #expect(failure.withLock { writerError == nil })
            #expect(sink.usesZeroOut == false)
            #expect(sink.bytesZeroed == UInt64(4 * block))
            #expect(summary.dataBytes == sink.bytesWritten)
            #expect(try sha256(target) == sha256(fixture.source))
        }
    }
}
