import CopyEngine
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Digest128")
struct DigestTests {
    @Test("XXH3-128 of known inputs equals xxhsum -H2; hex and canonical bytes round-trip")
    func knownValues() throws {
        try withTemporaryDirectory { directory in
            for (name, bytes) in [("empty", [UInt8]()), ("hello", Array("hello".utf8)), ("random", randomBytes(seed: 9, count: 100_003))] {
                let path = directory.appending(name)
                try Data(bytes).write(to: URL(fileURLWithPath: path.string))
                let witness = String(try run(["xxhsum", "-H2", path.string]).prefix(32))
                let digest = Digest128.of(bytes)
                #expect(digest.hex == witness, "\(name)")
                #expect(Digest128(hex: witness) == digest)
                #expect(Digest128(hex: witness.uppercased()) == digest)
                let canonical = digest.canonicalBytes
                #expect(canonical.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() == witness)
                #expect(canonical.withUnsafeBytes { Digest128(canonical: $0) } == digest)
            }
        }
    }

    @Test("hex that is not 32 hex digits is refused", arguments: ["", "0", String(repeating: "g", count: 32), String(repeating: "0", count: 33)])
    func badHex(_ text: String) {
        #expect(Digest128(hex: text) == nil)
    }
}

@Suite("Zero detection")
struct ZeroDetectionTests {
    @Test("a single non-zero byte anywhere, at any alignment, makes a buffer non-zero")
    func everyPosition() {
        for count in [0, 1, 7, 8, 9, 63, 64, 65, 200] {
            for shift in 0..<8 {
                var bytes = [UInt8](repeating: 0, count: count + shift)
                bytes.withUnsafeBytes { #expect(isAllZero(UnsafeRawBufferPointer(rebasing: $0[shift...]))) }
                for position in 0..<count {
                    bytes[shift + position] = 0x80
                    bytes.withUnsafeBytes { raw in
                        #expect(!isAllZero(UnsafeRawBufferPointer(rebasing: raw[shift...])), "count \(count) shift \(shift) at \(position)")
                    }
                    bytes[shift + position] = 0
                }
            }
        }
    }
}

@Suite("Rate limit")
struct RateLimitTests {
    @Test("the token bucket lets a burst through, then makes each take wait for its cost at the rate")
    func bucket() {
        let second: UInt64 = 1_000_000_000
        var bucket = TokenBucket(bytesPerSecond: 1 << 20, burst: 1 << 20, now: 10 * second)
        #expect(bucket.take(1 << 20, now: 10 * second) == 0)                 // the burst
        #expect(bucket.take(1 << 20, now: 10 * second) == second)            // a second's worth
        #expect(bucket.take(512 << 10, now: 11 * second) == second / 2)      // paid until 12.5 s
        #expect(bucket.take(1, now: 11 * second + second / 2) == 954)        // ceil(1e9 / 2^20) ns
        // After a long idle spell only one burst is available, not the whole idle time.
        #expect(bucket.take(1 << 20, now: 100 * second) == 0)
        #expect(bucket.take(2 << 20, now: 100 * second) == 2 * second)
    }

    @Test("a take larger than the burst goes into debt: it waits the excess")
    func debt() {
        var bucket = TokenBucket(bytesPerSecond: 1000, burst: 100, now: 0)
        #expect(bucket.take(1100, now: 0) == 1_000_000_000)
        #expect(bucket.take(100, now: 1_000_000_000) == 100_000_000)
    }

    @Test("the limiter sleeps what the bucket says, in slices of at most 50 ms, and stops sleeping on cancel")
    func limiterSleeps() {
        let clock = VirtualClock()
        let limiter = RateLimiter(bytesPerSecond: 1 << 20, burst: 1 << 20, clock: clock)
        #expect(limiter.acquire(1 << 20))
        #expect(clock.slept.isEmpty)
        #expect(limiter.acquire(1 << 20))
        #expect(clock.totalSlept == 1_000_000_000)
        #expect(clock.slept.count == 20)
        #expect(clock.slept.allSatisfy { $0 == 50_000_000 })

        let flag = CancellationFlag()
        flag.cancel()
        let before = clock.slept.count
        #expect(limiter.acquire(1 << 20, cancel: flag) == false)
        #expect(clock.slept.count == before)
    }
}

@Suite("Progress")
struct ProgressTests {
    final class Captured: @unchecked Sendable {
        let lock = NSLock()
        var pieces: [String] = []
        func append(_ text: String) { lock.withLock { pieces.append(text) } }
        var all: [String] { lock.withLock { pieces } }
    }

    func progress(_ done: UInt64, of total: UInt64, rate: UInt64) -> CopyProgress {
        let perSecond = Double(rate)
        return CopyProgress(bytesDone: done, bytesTotal: total, bytesPerSecond: perSecond,
                            etaSeconds: rate > 0 ? Double(total - done) / perSecond : nil, elapsedSeconds: Double(done) / max(perSecond, 1))
    }

    @Test("JSON lines: one object per line at most once per interval, and a final one with done:true")
    func jsonLines() throws {
        let clock = VirtualClock()
        let captured = Captured()
        let reporter = ProgressReporter(style: .jsonLines, label: "export", interval: 1, clock: clock, output: captured.append)
        reporter.report(progress(1 << 20, of: 4 << 20, rate: 1 << 20))
        clock.advance(500_000_000)
        reporter.report(progress(2 << 20, of: 4 << 20, rate: 1 << 20))   // too soon: not shown
        clock.advance(600_000_000)
        reporter.report(progress(3 << 20, of: 4 << 20, rate: 1 << 20))
        reporter.finish(progress(4 << 20, of: 4 << 20, rate: 1 << 20))
        let lines = captured.all
        #expect(lines.count == 3)
        #expect(lines.allSatisfy { $0.hasSuffix("\n") && $0.filter { $0 == "\n" }.count == 1 })
        let objects = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(objects.map { $0["bytesDone"] as? Int } == [1 << 20, 3 << 20, 4 << 20])
        #expect(objects.map { $0["done"] as? Bool } == [false, false, true])
        #expect(objects[0]["label"] as? String == "export")
        #expect(objects[0]["bytesTotal"] as? Int == 4 << 20)
        #expect(objects[0]["bytesPerSecond"] as? Int == 1 << 20)
        #expect(objects[0]["etaSeconds"] as? Double == 3)
        #expect(objects[2]["etaSeconds"] as? Double == 0)
    }

    @Test("terminal: one line rewritten with a carriage return, padded over a longer one, ended by finish")
    func terminalLine() {
        let clock = VirtualClock()
        let captured = Captured()
        let reporter = ProgressReporter(style: .terminal, label: "export", interval: 0.2, clock: clock, output: captured.append)
        reporter.report(progress(1536 << 20, of: 4 << 30, rate: 412 << 20))
        clock.advance(300_000_000)
        reporter.report(progress(2 << 30, of: 4 << 30, rate: 0))
        reporter.finish(progress(4 << 30, of: 4 << 30, rate: 500 << 20))
        let pieces = captured.all
        #expect(pieces.count == 3)
        #expect(pieces[0] == "\rexport  1.5 GiB / 4.0 GiB  37%  412.0 MiB/s  ETA 0:07")
        // The second line is shorter (no ETA without a rate): spaces cover the rest.
        #expect(pieces[1].hasPrefix("\rexport  2.0 GiB / 4.0 GiB  50%  0 B/s"))
        #expect(pieces[1].count == pieces[0].count)
        #expect(pieces[2].hasSuffix("\n"))
        #expect(pieces.allSatisfy { !$0.contains("\u{1B}") })
    }

    @Test("automatic: a terminal line when stderr is a terminal, nothing otherwise; silent shows nothing")
    func automatic() {
        let captured = Captured()
        let reporter = ProgressReporter(style: .automatic, output: captured.append)
        #expect(reporter.style == (isatty(STDERR_FILENO) == 1 ? .terminal : .silent))
        let silent = ProgressReporter(style: .silent, output: captured.append)
        silent.report(progress(1, of: 2, rate: 1))
        silent.finish(progress(2, of: 2, rate: 1))
        if reporter.style == .silent {
            reporter.report(progress(1, of: 2, rate: 1))
            reporter.finish(progress(2, of: 2, rate: 1))
        }
        #expect(captured.all.isEmpty)
    }

    @Test("the engine reports progress after every write, ending at the total")
    func engineProgress() throws {
        try withTemporaryDirectory { directory in
            let source = directory.appending("source")
            try makeSource(source, blockSize: block, kinds: Array(repeating: .data, count: 10))
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: block, ioSize: 4 * block))
            var seen: [CopyProgress] = []
            _ = try engine.run(extents: engine.wholeSource, into: NullSink(), progress: { seen.append($0) })
            #expect(seen.map(\.bytesDone) == [UInt64(4 * block), UInt64(8 * block), UInt64(10 * block)])
            #expect(seen.allSatisfy { $0.bytesTotal == UInt64(10 * block) })
            #expect(seen.last?.fraction == 1)
        }
    }
}

@Suite("Block device sink")
struct BlockDeviceSinkTests {
    @Test("restore onto a loop device: data written, zero runs zeroed with BLKZEROOUT, the device equals the image",
          .enabled(if: rootTestsRun, "needs root to bind a loop device"))
    func loopDevice() throws {
        try withTemporaryDirectory { directory in
            let image = directory.appending("image")
            let kinds: [BlockKind] = [.data, .zeros, .zeros, .data, .hole, .data, .hole, .hole]
            try makeSource(image, blockSize: block, kinds: kinds)
            // The device starts full of other data, so that zeroing is visible.
            let backing = directory.appending("backing")
            try makeSource(backing, blockSize: block, kinds: Array(repeating: .data, count: kinds.count), seed: 99)
            let loop = try run(["losetup", "--find", "--show", backing.string]).trimmingCharacters(in: .whitespacesAndNewlines)
            defer { _ = try? run(["losetup", "-d", loop]) }

            let engine = try CopyEngine(source: image, options: CopyOptions(blockSize: block))
            let sink = try BlockDeviceSink(path: FilePath(loop))
            let statistics = try engine.run(extents: engine.wholeSource, into: sink)
            try sink.finish()
            #expect(sink.usesZeroOut)
            #expect(sink.bytesZeroed == UInt64(5 * block))
            #expect(statistics.bytesWritten == UInt64(3 * block))
            #expect(try sha256(FilePath(loop)) == sha256(image))
        }
    }

    @Test("a block device held open exclusively elsewhere is refused with EBUSY",
          .enabled(if: rootTestsRun, "needs root to bind a loop device"))
    func exclusive() throws {
        try withTemporaryDirectory { directory in
            let backing = directory.appending("backing")
            try makeSource(backing, blockSize: block, kinds: [.data, .data])
            let loop = try run(["losetup", "--find", "--show", backing.string]).trimmingCharacters(in: .whitespacesAndNewlines)
            defer { _ = try? run(["losetup", "-d", loop]) }
            let first = try BlockDeviceSink(path: FilePath(loop))
            let error = try #require(throws: CopyError.self) { try BlockDeviceSink(path: FilePath(loop)) }
            #expect(error.errno == .resourceBusy)
            _ = first
        }
    }
}
