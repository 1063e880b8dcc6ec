import CShims
import Foundation

/// A snapshot set is worth having only if its members show one moment: what a power cut
/// would have left on all the disks at once. The witness is a writer outside snapstack that
/// stamps an increasing counter into a fixed block of each member in turn, every write
/// synchronous and direct, so that write n completes before write n+1 is issued. A set whose
/// members were frozen one after another (or any member caught later than another) shows a
/// member ahead of a write that came before it.
enum CrashCutScenarios {
    typealias CLI = OrchestratorScenarios.CLI

    static let all: [Scenario] = [
        Scenario("sets under a writer stamping counters into three devices in turn: every set is a crash cut (\(sets) sets)",
                 crashCuts).lasting(Tier.length(ci: 110, nightly: 220)),
    ]

    /// Where the writer stamps its counter on every member: one 4 KiB block at 1 MiB. Each
    /// snapshot copies that one chunk on write, so a small store holds it.
    static let stampOffset: Int64 = 1 << 20
    /// Each set is one more chance to catch a member frozen late: CI takes 4, the nightly tier 14.
    static let sets = Tier.length(ci: 4, nightly: 14)

    /// Write n goes to member n % 3, as 512 copies of n (little-endian UInt64) filling the block;
    /// each write is O_DIRECT|O_SYNC, so it has reached the device when the next one starts.
    /// SIGTERM ends it (exit 0); a failed write ends it with Python's traceback (exit 1).
    static let writer = """
        import mmap, os, signal, struct, sys
        fds = [os.open(p, os.O_WRONLY | os.O_DIRECT | os.O_SYNC) for p in sys.argv[1:]]
        block = mmap.mmap(-1, 4096)
        n = 0
        def stop(*_):
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        while True:
            block.seek(0)
            block.write(struct.pack("<Q", n + 1) * 512)
            os.pwrite(fds[(n + 1) % len(fds)], block, \(stampOffset))
            n += 1
        """

    static func crashCuts(_ lab: Lab) throws {
        let cli = CLI(lab)
        let names = ["cut0", "cut1", "cut2"]
        var tops: [String] = []
        for name in names {
            let disk = try lab.loopDevice(name, size: .mebibytes(8))
            tops.append(try cli.protect(disk.path, name))
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", writer] + tops
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() } }
        // Let it get going on every member before the first set.
        let deadline = Date().addingTimeInterval(60)
        while try tops.map(stamp).min() ?? 0 == 0 {
            try expect(process.isRunning, "the writer ended: \(String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))")
            try expect(Date() < deadline, "the writer wrote nothing to some member within 60 s")
            usleep(50_000)
        }

        var previous: UInt64 = 0
        var lines: [String] = []
        for set in 0..<sets {
            let taken = try cli.run(["snapshot"] + names + ["--as", "c\(set)", "--size", "1M"])
            try expectEqual(taken.status, 0, "set c\(set): snapshot (stderr: \(taken.stderr))")
            let paths = taken.stdout.split(separator: "\n").map(String.init)
            try expectEqual(paths.count, names.count, "set c\(set): paths printed")
            let seen = try paths.map(stamp)
            try expect(process.isRunning, "set c\(set): the writer ended")
            try expect(isCrashCut(seen), "set c\(set): counters \(seen) are no crash cut: a member shows a write that came after one missing from another")
            let latest = seen.max() ?? 0
            try expect(latest > previous, "set c\(set): counters \(seen) did not move on from the last set's \(previous); the writer is not writing")
            previous = latest
            lines.append("\(seen)")
            // The snapshots stay: from the second set on, every origin has snapshots already,
            // so each new one goes live inside the freeze (the other path of a set).
            if (set + 1) % 5 == 0 { print("      set \(set + 1): counters \(seen)") }
        }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        try expect(process.terminationReason == .exit && process.terminationStatus == 0,
                   "the writer failed: \(String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))")
        // The origins hold the writer's last stamps, a cut past the last set's: the sets lost
        // or reordered none of its writes. (Its own count may be one behind: SIGTERM can land
        // between a write and the increment.)
        let final = try tops.map(stamp)
        let written = final.max() ?? 0
        try expect(isCrashCut(final) && written > previous, "origins after the writer stopped: \(final), the last set's highest \(previous)")
        print("      \(sets) sets over \(written) synchronous writes; the first sets' counters: \(lines.prefix(3).joined(separator: " "))")
        for name in names { try cli.ok("unprotect", name, "--force") }
    }

    /// Whether counters read from members 0, 1, 2 are what the writer had written at some
    /// moment: with m the highest, every member holds the last counter ≤ m that went to it.
    static func isCrashCut(_ counters: [UInt64]) -> Bool {
        let members = UInt64(counters.count)
        guard let highest = counters.max(), members > 0 else { return false }
        return counters.enumerated().allSatisfy { member, counter in
            // The last n ≤ highest with n % members == member (0 when there is none).
            let offset = (highest + members - UInt64(member)) % members
            let expected = highest >= offset ? highest - offset : 0
            return counter == expected
        }
    }

    /// The counter stamped at `stampOffset` of `path`, read with O_DIRECT past the page cache.
    static func stamp(_ path: String) throws -> UInt64 {
        let fd = open(path, O_RDONLY | snapstack_O_DIRECT)
        guard fd >= 0 else { throw Failure(description: "open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 4096, 4096) == 0, let buffer = raw else { throw Failure(description: "posix_memalign") }
        defer { free(buffer) }
        guard pread(fd, buffer, 4096, off_t(stampOffset)) == 4096 else {
            throw Failure(description: "read \(path) at \(stampOffset): \(String(cString: strerror(errno)))")
        }
        // A torn block (a write the snapshot caught half-done) would show two different values.
        let values = (0..<512).map { buffer.load(fromByteOffset: $0 * 8, as: UInt64.self) }
        guard Set(values).count == 1 else { throw Failure(description: "\(path): the stamp block is torn: \(Set(values).sorted())") }
        return UInt64(littleEndian: values[0])
    }
}
