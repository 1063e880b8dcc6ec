import BlockIO
import DeviceMapper
import Foundation
import Snapstack
import SnapstackDaemon
import SystemPackage

/// Snapshot stores that fill up: what the kernel does when a COW store grows or fills,
/// `snapstack extend`, and the store watch (`StoreWatchService`) run in this process, checked
/// with dmsetup, losetup, stat and sha256sum.
enum StoreWatchScenarios {
    static let all: [Scenario] = [
        Scenario("kernel: a COW loop grown under a live snapshot is used without a reload; a full one invalidates and raises an event",
                 kernelUsesGrownStore),
        Scenario("extend grows a live snapshot's store: dmsetup status shows it, the snapshot stays valid and unchanged; refusals change nothing",
                 extendGrowsStore).lasting(260).nightly(),
        Scenario("extend interrupted at each failpoint is finished by reconcile to the size asked", extendFailpoints).lasting(210).nightly(),
        Scenario("store watch: under a steady write load, while an export reads the snapshot, a small store is grown in time; the snapshot stays frozen and the image equals it",
                 watchGrowsUnderLoad).lasting(250).nightly(),
        Scenario("store watch: with growth off an overflowed snapshot is dropped on the kernel's event, logged, the origin intact",
                 watchDropsOverflowed).lasting(130).nightly(),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    // MARK: Helpers

    /// A progress line on stderr, so that a slow step in a loaded VM shows where it is.
    static func note(_ text: String) {
        FileHandle.standardError.write(Data("      · \(text)\n".utf8))
    }

    /// `dmsetup status NAME` of a snapshot, read by dmsetup: (allocated, total) sectors, or the
    /// word the kernel printed instead.
    static func snapshotStatus(_ lab: Lab, _ name: String) throws -> (allocated: UInt64, total: UInt64)? {
        let line = try lab.sh("dmsetup", "status", name).trimmingCharacters(in: .whitespacesAndNewlines)
        let fields = line.split(separator: " ")
        guard fields.count >= 4, fields[2] == "snapshot" else { throw Failure(description: "not a snapshot status: \(line)") }
        let usage = fields[3].split(separator: "/")
        guard usage.count == 2, let allocated = UInt64(usage[0]), let total = UInt64(usage[1]) else { return nil }
        return (allocated, total)
    }

    static func statusWord(_ lab: Lab, _ name: String) throws -> String {
        let fields = try lab.sh("dmsetup", "status", name).split(separator: " ")
        return fields.count >= 4 ? String(fields[3]).trimmingCharacters(in: .whitespacesAndNewlines) : ""
    }

    static func fileSize(_ path: String) throws -> UInt64 {
        UInt64(try lab_stat(path))
    }

    private static func lab_stat(_ path: String) throws -> Int {
        guard let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber else {
            throw Failure(description: "no size for \(path)")
        }
        return size.intValue
    }

    /// The rows of `snapstack events --reportformat json`, optionally of one kind.
    static func events(_ cli: CLI, kind: String? = nil) throws -> [[String: Any]] {
        var arguments = ["events", "--reportformat", "json", "-o", "all"]
        if let kind { arguments += ["--kind", kind] }
        let result = try cli.run(arguments)
        try expectEqual(result.status, 0, "snapstack events (stderr: \(result.stderr))")
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let reports = object["report"] as? [[String: Any]], let rows = reports.first?["event"] as? [[String: Any]]
        else { throw Failure(description: "unexpected events JSON: \(result.stdout)") }
        return rows
    }

    /// A store watch running in this process, as `snapstack daemon` runs it.
    final class Watch: @unchecked Sendable {
        private let task: Task<Void, any Error>
        private var stopped = false

        init(state: String, settings: StoreWatchSettings) {
            let service = StoreWatchService(stateDirectory: FilePath(state), settings: settings)
            task = Task { try await service.run() }
        }

        /// Cancels the service and waits for `run` to return; returns how long that took.
        @discardableResult
        func stop() throws -> Double {
            guard !stopped else { return 0 }
            stopped = true
            let started = Date()
            task.cancel()
            let done = DispatchSemaphore(value: 0)
            let outcome = Box<Result<Void, any Error>>()
            let task = self.task
            Task {
                outcome.value = await task.result
                done.signal()
            }
            guard done.wait(timeout: .now() + 30) == .success else {
                throw Failure(description: "the store watch did not return within 30 s of its cancellation")
            }
            if case .failure(let error)? = outcome.value { throw Failure(description: "the store watch failed: \(error)") }
            return Date().timeIntervalSince(started)
        }

        deinit { _ = try? stop() }
    }

    final class Box<T>: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: T?
        var value: T? {
            get { lock.withLock { stored } }
            set { lock.withLock { stored = newValue } }
        }
    }

    // MARK: Scenarios

    static func kernelUsesGrownStore(_ lab: Lab) throws {
        let origin = try lab.loopDevice("origin", size: .mebibytes(32), random: true)
        // Loop devices over 1 MiB store files, preallocated as snapstack's are.
        let stores = try ["grown", "kept"].map { label -> (file: String, loop: String) in
            let loop = try lab.loopDevice(label, size: .mebibytes(1))
            let file = lab.scratch.appendingPathComponent("\(label).img").path
            try lab.sh("fallocate", "-l", "1M", file)
            return (file, loop.path)
        }
        let sectors = origin.facts.sectors.rawValue
        let (originName, originUUID) = try lab.name("kx-origin")
        let (grownName, grownUUID) = try lab.name("kx-grown")
        let (keptName, keptUUID) = try lab.name("kx-kept")
        // Snapshots first: the origin target takes its I/O split (the smallest chunk) when it resumes.
        lab.track(grownName)
        lab.track(keptName)
        try lab.sh("dmsetup", "create", grownName.rawValue, "-u", grownUUID.rawValue, "--table", "0 \(sectors) snapshot \(origin.path) \(stores[0].loop) P 8")
        try lab.sh("dmsetup", "create", keptName.rawValue, "-u", keptUUID.rawValue, "--table", "0 \(sectors) snapshot \(origin.path) \(stores[1].loop) P 8")
        lab.track(originName)
        try lab.sh("dmsetup", "create", originName.rawValue, "-u", originUUID.rawValue, "--table", "0 \(sectors) snapshot-origin \(origin.path)")
        let frozen = try lab.sha256(grownName.devicePath, length: .mebibytes(32))
        let table = try lab.dmsetupTable(grownName)

        try lab.writeRandom(originName.devicePath, offset: .zero, length: .kibibytes(512))
        let before = try snapshotStatus(lab, grownName.rawValue)
        try expectEqual(before?.total, 2048, "COW total before the growth (sectors)")
        for store in stores {
            try lab.sh("truncate", "-s", "4M", store.file)
            try lab.sh("fallocate", "-l", "4M", store.file)
        }
        // A grown file alone changes nothing: the loop device keeps its size.
        try expectEqual(try snapshotStatus(lab, grownName.rawValue)?.total, 2048, "COW total with the file grown, loop not refreshed")
        try lab.sh("losetup", "--set-capacity", stores[0].loop)
        try expectEqual(try snapshotStatus(lab, grownName.rawValue)?.total, 8192, "COW total after losetup --set-capacity")
        try expectEqual(try snapshotStatus(lab, keptName.rawValue)?.total, 2048, "COW total of the unrefreshed store")
        try expectEqual(try lab.dmsetupTable(grownName), table, "the snapshot's table (no reload)")

        // Events: one descriptor armed before the overflow sees it.
        let events = try DeviceMapperEvents()
        let driver = try lab.dm.driverVersion()
        try expect(events.pollable, "driver \(driver) cannot be polled")
        try events.arm()
        try expectEqual(try events.wait(timeout: .milliseconds(300)), .timeout, "a wait with no event")
        let eventsBefore = try lab.dmsetupInfo(keptName, "events")

        // 2.5 MiB more: past what either store had, within what the refreshed one has now.
        let write = try lab.run(["dd", "if=/dev/urandom", "of=\(originName.devicePath)", "bs=64k", "seek=8", "count=40",
                                 "oflag=direct", "conv=notrunc,fsync", "status=none"], allowFailure: true)
        try expectEqual(write.status, 0, "origin writes while a snapshot overflows (stderr: \(write.stderr))")
        let after = try snapshotStatus(lab, grownName.rawValue)
        try expect((after?.allocated ?? 0) > 2048, "the refreshed store should hold more than its old size: \(String(describing: after))")
        try expectEqual(try statusWord(lab, keptName.rawValue), "Invalid", "status of the snapshot whose loop kept its size")
        try expect(try lab.dmsetupInfo(keptName, "events") != eventsBefore, "the invalidation raised no dm event")
        let waited = Date()
        try expectEqual(try events.wait(timeout: .seconds(30)), .event, "the armed wait after the invalidation")
        FileHandle.standardError.write(Data(String(format: "      armed wait returned %.3f s after the write\n", Date().timeIntervalSince(waited)).utf8))
        try expectEqual(try lab.sha256(grownName.devicePath, length: .mebibytes(32)), frozen, "the grown snapshot's content")

        // cancel() from another thread ends a long wait promptly, and every later one.
        let canceller = Thread { Thread.sleep(forTimeInterval: 0.3); events.cancel() }
        canceller.start()
        let cancelStarted = Date()
        try events.arm()
        try expectEqual(try events.wait(timeout: .seconds(60)), .cancelled, "a wait cancelled from another thread")
        try expect(Date().timeIntervalSince(cancelStarted) < 30, "cancel took \(Date().timeIntervalSince(cancelStarted)) s")
        try expectEqual(try events.wait(timeout: .seconds(60)), .cancelled, "a wait after the cancel")
    }

    static func extendGrowsStore(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(64)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let top = try cli.protect(disk.path, "vol")
        let path = try cli.ok("snapshot", "vol", "--as", "s", "--size", "1M").trimmingCharacters(in: .whitespacesAndNewlines)
        let name = "snapstack-vol-s"
        let frozen = try lab.sha256(path, length: size)
        let table = try lab.sh("dmsetup", "table", name)
        try expectEqual(try snapshotStatus(lab, name)?.total, 2048, "COW total at the start (sectors)")
        let store = try cli.rows("snapshots").first?["store"] as? String ?? ""
        try lab.writeRandom(top, offset: .zero, length: .kibibytes(768))
        try expect((try snapshotStatus(lab, name)?.allocated ?? 0) > 1536, "768 KiB of origin writes did not reach the store")

        // Every growth: dmsetup status and the file's size; the first and the last also the loop
        // device's size, the recorded size and the table (process starts are slow in the VM).
        func grow(_ argument: String, expect bytes: UInt64, fully: Bool = false) throws {
            note("extend --size \(argument)")
            let result = try cli.run(["extend", path, "--size", argument])
            try expectEqual(result.status, 0, "extend --size \(argument) (stderr: \(result.stderr))")
            try expectEqual(try snapshotStatus(lab, name)?.total, bytes / 512, "dmsetup status total after --size \(argument)")
            try expectEqual(try fileSize(store), bytes, "store file size after --size \(argument)")
            guard fully else { return }
            let loop = try lab.sh("sh", "-c", "losetup -j \"$1\" -O NAME --noheadings", "sh", store).trimmingCharacters(in: .whitespacesAndNewlines)
            try expectEqual(UInt64(try lab.sh("blockdev", "--getsize64", loop).trimmingCharacters(in: .whitespacesAndNewlines)), bytes,
                            "loop device size after --size \(argument)")
            try expectEqual((try cli.rows("snapshots").first?["size"] as? NSNumber)?.uint64Value, bytes, "recorded size after --size \(argument)")
            try expectEqual(try lab.sh("dmsetup", "table", name), table, "the snapshot's table after --size \(argument)")
        }
        try grow("+2M", expect: 3 << 20, fully: true)
        // More than the old store could ever hold, well within the new one.
        try lab.writeRandom(top, offset: .mebibytes(1), length: .mebibytes(2))
        let status = try snapshotStatus(lab, name)
        try expect((status?.allocated ?? 0) > 2048, "allocated \(String(describing: status)) should pass the old 1 MiB")
        try expectEqual(try lab.sha256(path, length: size), frozen, "the snapshot after growing and more origin writes")
        try grow("4M", expect: 4 << 20)
        try grow("+50%", expect: 6 << 20)
        try grow("10%", expect: (UInt64(6_710_887) + 4095) / 4096 * 4096)
        // A larger request is cut to a store that holds every chunk of the origin:
        // header + 16384 data chunks + their 64 metadata chunks + the next area's.
        try grow("1T", expect: (2 + 16384 + 64) * 4096, fully: true)
        try expectEqual(try lab.sha256(path, length: size), frozen, "the snapshot at the end")
        try expect(!(try lab.sh("dmsetup", "info", "-c", "--noheadings", "-o", "attr", name)).contains("s"), "left suspended")
        let rows = try events(cli, kind: "extend")
        try expectEqual(rows.count, 5, "extend events")
        try expect(rows.allSatisfy { $0["name"] as? String == "vol-s" && $0["path"] as? String == path }, "extend event rows: \(rows)")
        try expect((rows.first?["message"] as? String ?? "").contains("to 3 MiB"), "first extend event: \(rows.first ?? [:])")

        // Refusals: each one line, its exit status, and nothing changed.
        note("setting up the refusals")
        let other = try lab.loopDevice("other", size: .mebibytes(16))
        let device = try lab.loopDevice("cowdev", size: .mebibytes(4))
        _ = try cli.protect(other.path, "dev")
        try cli.ok("snapshot", "dev", "--as", "d", "--store", device.path)
        let small = try lab.loopDevice("small", size: .mebibytes(8))
        let smallTop = try cli.protect(small.path, "tiny")
        try cli.ok("snapshot", "tiny", "--as", "t", "--size", "64K")
        try lab.writeRandom(smallTop, offset: .zero, length: .mebibytes(1))
        try expectEqual(try statusWord(lab, "snapstack-tiny-t"), "Invalid", "the overfilled snapshot")
        let cases: [(String, [String], Int32)] = [
            ("a size below the store's", ["extend", "vol-s", "--size", "1M"], 64),
            ("a store that holds every chunk already", ["extend", "vol-s", "--size", "+1M"], 64),
            ("zero", ["extend", "vol-s", "--size", "+0"], 64),
            ("a malformed size", ["extend", "vol-s", "--size", "12Q"], 64),
            ("an unknown snapshot", ["extend", "vol-nope", "--size", "+1M"], 5),
            ("a block-device store", ["extend", "dev-d", "--size", "+1M"], 6),
            ("an invalidated snapshot", ["extend", "tiny-t", "--size", "+1M"], 6),
        ]
        // Each refusal changes nothing, so neither do all of them: the witnesses are read once
        // before and once after (every process start costs seconds in the emulated VM).
        let before = try OrchestratorScenarios.world(lab, cli)
        for (what, arguments, code) in cases {
            note("refusal: \(what)")
            let result = try cli.run(arguments)
            try expectEqual(result.status, code, "\(what): exit status (stderr: \(result.stderr))")
            let lines = result.stderr.split(separator: "\n")
            try expect(!lines.isEmpty && (lines[0].hasPrefix("snapstack: ") || lines[0].hasPrefix("Error: ")),
                       "\(what): the reason should lead stderr: \(result.stderr)")
            if lines.first?.hasPrefix("snapstack: ") == true { try expectEqual(lines.count, 1, "\(what): lines of stderr") }
        }
        try expectEqual(try OrchestratorScenarios.world(lab, cli), before, "dmsetup ls, losetup -a and the database after the refusals")
        for name in ["vol", "dev", "tiny"] { try cli.ok("unprotect", name, "--force") }
    }

    static func extendFailpoints(_ lab: Lab) throws {
        let cli = CLI(lab)
        let disk = try lab.loopDevice("disk", size: .mebibytes(16), random: true)
        for point in Failpoint.allCases where point.rawValue.hasPrefix("extend.") {
            note("crash at \(point.rawValue)")
            let top = try cli.protect(disk.path, "vol")
            let path = try cli.ok("snapshot", "vol", "--as", "s", "--size", "1M").trimmingCharacters(in: .whitespacesAndNewlines)
            let frozen = try lab.sha256(path, length: .mebibytes(16))
            let store = try cli.rows("snapshots").first?["store"] as? String ?? ""
            let result = try cli.run(["extend", "vol-s", "--size", "+1M"], failpoint: point.rawValue)
            try expectEqual(result.status, 128 + 9, "extend should die at \(point.rawValue) (stderr: \(result.stderr))")
            let status = try cli.run(["status", "-o", "pending", "--noheadings"])
            try expectEqual(status.status, 1, "status after a crash at \(point.rawValue) (\(status.stdout))")
            try expect(status.stdout.contains("finish growing its store to 2 MiB"), "\(point.rawValue): status says \(status.stdout)")
            try cli.ok("reconcile")
            try expectEqual(try cli.run(["status"]).status, 0, "status after reconcile (\(point.rawValue))")
            try expectEqual(try snapshotStatus(lab, "snapstack-vol-s")?.total, 4096, "\(point.rawValue): dmsetup status total")
            try expectEqual(try fileSize(store), 2 << 20, "\(point.rawValue): store file size")
            try expectEqual((try cli.rows("snapshots").first?["size"] as? NSNumber)?.uint64Value, 2 << 20, "\(point.rawValue): recorded size")
            // The new space is used: 1.5 MiB of changes fit now.
            try lab.writeRandom(top, offset: .zero, length: .kibibytes(1536))
            try expectEqual(try lab.sha256(path, length: .mebibytes(16)), frozen, "\(point.rawValue): the snapshot's content")
            try cli.ok("unprotect", "vol", "--force")
        }
    }

    static func watchGrowsUnderLoad(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(64)
        let written = Bytes.mebibytes(12)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let top = try cli.protect(disk.path, "vol")
        let path = try cli.ok("snapshot", "vol", "--as", "s", "--size", "2M").trimmingCharacters(in: .whitespacesAndNewlines)
        let frozen = try lab.sha256(path, length: size)
        let settings = StoreWatchSettings(enabled: true, threshold: 0.5, step: nil, limit: nil, pollInterval: .seconds(1))
        let watch = Watch(state: cli.state, settings: settings)
        defer { _ = try? watch.stop() }

        // The witness: this process samples the kernel's status every 50 ms on its own.
        let name = try DMName("snapstack-vol-s")
        let highest = Box<Double>(), invalid = Box<Bool>(), done = Box<Bool>()
        highest.value = 0
        let sampler = Thread {
            let dm = DeviceMapperClient()
            while done.value != true {
                if case .snapshot(let status)? = try? dm.status(name).first?.status {
                    if let used = status.usedPercent { highest.value = max(highest.value ?? 0, used) }
                    if status == .invalid || status == .overflow { invalid.value = true }
                }
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        sampler.start()
        defer { done.value = true }
        Thread.sleep(forTimeInterval: 1.5)

        // An export reads the snapshot all along (64 MiB at 1 MiB/s): the store must grow while
        // it runs, so the export may not hold the state lock the watch needs to grow it.
        let image = lab.scratch.appendingPathComponent("read-meanwhile.img").path
        let exported = Box<(status: Int32, stdout: String, stderr: String)>()
        let grownWhileExporting = Box<Int>()
        let exportEnded = DispatchSemaphore(value: 0)
        nonisolated(unsafe) let exporter = cli  // used by that thread alone until it signals
        DispatchQueue.global().async {
            exported.value = try? exporter.run(["export", "vol-s", "--to", image, "--max-rate", "1M"])
            // Every growth so far came after the export began: the writer starts after it.
            grownWhileExporting.value = (try? events(exporter, kind: "extend").count) ?? -1
            exportEnded.signal()
        }

        // A steady writer: 128 KiB of first writes to the origin, then half a second's pause, so
        // that a slow (emulated, loaded) machine writes slower, never in a catching-up burst.
        note("writing \(written.rawValue >> 20) MiB, 128 KiB every 0.5 s at most")
        let started = Date()
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/bin/sh")
        writer.arguments = ["-c", """
            i=0; while [ $i -lt $2 ]; do
              dd if=/dev/urandom of="$1" bs=128k seek=$i count=1 oflag=direct conv=notrunc status=none || exit 1
              i=$((i+1)); sleep 0.5
            done
            """, "sh", top, "\(written.rawValue / 131072)"]
        try writer.run()
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { writer.waitUntilExit(); finished.signal() }
        if finished.wait(timeout: .now() + 400) == .timedOut {
            writer.terminate()
            throw Failure(description: "the writer did not finish within 400 s")
        }
        let seconds = Date().timeIntervalSince(started)
        try expectEqual(writer.terminationStatus, 0, "the writer's exit status")
        Thread.sleep(forTimeInterval: 1.5)
        guard exportEnded.wait(timeout: .now() + 300) == .success, let export = exported.value else {
            throw Failure(description: "the export did not end within 300 s of the writer")
        }
        try expectEqual(export.status, 0, "the export beside the writer and the watch (stderr: \(export.stderr))")
        let growths = grownWhileExporting.value ?? -1
        try expect(growths >= 2, "the store grew \(growths) time(s) while the export read the snapshot")
        try expectEqual(try ExportScenarios.fileSHA256(lab, image), frozen, "the image exported while the store grew")
        done.value = true
        let frozenNow = try lab.sha256(path, length: size)

        // A snapshot device that vanishes behind snapstack's back neither stops nor hangs the watch.
        try lab.sh("dmsetup", "remove", "snapstack-vol-s")
        Thread.sleep(forTimeInterval: 2.5)
        let stopTime = try watch.stop()

        try expect(invalid.value != true, "the snapshot was invalidated under the watch")
        try expectEqual(frozenNow, frozen, "the snapshot's content after 12 MiB of origin writes")
        // Re-activated from its grown store, as after a reboot: the same content, the same size.
        try cli.ok("reconcile")
        let final = try snapshotStatus(lab, "snapstack-vol-s")
        let finalText = try lab.sh("dmsetup", "status", "snapstack-vol-s")
        try expect(final != nil, "the snapshot is not valid: \(finalText)")
        try expectEqual(try lab.sha256(path, length: size), frozen, "the snapshot re-activated from its grown store")
        let grown = try events(cli, kind: "extend")
        try expect(grown.count >= 2, "extend events: \(grown)")
        try expect(grown.allSatisfy { ($0["message"] as? String ?? "").contains("by the store watch") }, "extend events: \(grown)")
        let recorded = (try cli.rows("snapshots").first?["size"] as? NSNumber)?.uint64Value ?? 0
        try expectEqual(recorded / 512, final?.total ?? 0, "recorded store size against dmsetup status")
        FileHandle.standardError.write(Data(String(
            format: "      measured: %.0f MiB of first writes in %.1f s (%.2f MiB/s), poll interval 1 s, threshold 50%%: %d growths, 2 MiB -> %.0f MiB, highest use seen %.1f%%, run() returned %.3f s after cancel\n",
            Double(written.rawValue) / 1048576, seconds, Double(written.rawValue) / 1048576 / seconds, grown.count,
            Double(recorded) / 1048576, highest.value ?? 0, stopTime).utf8))
        try cli.ok("unprotect", "vol", "--force")
    }

    static func watchDropsOverflowed(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(32)
        let written = Bytes.mebibytes(4)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let held = try lab.loopDevice("held", size: size, random: true)
        let top = try cli.protect(disk.path, "vol")
        let heldTop = try cli.protect(held.path, "open")
        try cli.ok("snapshot", "vol", "open", "--as", "s", "--size", "512K")
        let store = try cli.rows("snapshots").first { $0["name"] as? String == "vol-s" }?["store"] as? String ?? ""
        let before = try lab.sha256(top, length: size)
        let data = lab.scratch.appendingPathComponent("data").path
        try lab.sh("dd", "if=/dev/urandom", "of=\(data)", "bs=1M", "count=\(written.rawValue >> 20)", "status=none")
        // /tmp is tmpfs in the VM: no O_DIRECT there, so plain sha256sum for the file.
        let expectedHead = String(try lab.sh("sha256sum", data).prefix(64))
        let expectedTail = try lab.sha256(top, offset: written, length: size - written)

        // A reader holds the other snapshot open, as a backup in progress would.
        let reader = Process()
        reader.executableURL = URL(fileURLWithPath: "/bin/sh")
        reader.arguments = ["-c", "exec 3<\"$1\"; exec sleep 600", "sh", "/dev/mapper/snapstack-open-s"]
        try reader.run()
        defer { if reader.isRunning { reader.terminate(); reader.waitUntilExit() } }

        // A poll interval far longer than the scenario: only the kernel's event can wake the watch.
        note("watch started; overfilling both stores")
        let watch = Watch(state: cli.state, settings: StoreWatchSettings(enabled: false, threshold: 0.8, pollInterval: .seconds(600)))
        defer { _ = try? watch.stop() }
        Thread.sleep(forTimeInterval: 2)
        let write = try lab.run(["dd", "if=\(data)", "of=\(top)", "bs=64k", "oflag=direct", "conv=notrunc,fsync", "status=none"],
                                allowFailure: true)
        try expectEqual(write.status, 0, "origin writes past the store's size (stderr: \(write.stderr))")
        try lab.writeRandom(heldTop, offset: .zero, length: .mebibytes(1))
        let wrote = Date()
        var gone: Double?
        while Date().timeIntervalSince(wrote) < 60 {
            if !(try lab.dmsetupNames()).contains("snapstack-vol-s") {
                gone = Date().timeIntervalSince(wrote)
                break
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        try expect(gone != nil, "the overflowed snapshot was not dropped within 60 s (poll interval 600 s)")
        FileHandle.standardError.write(Data(String(format: "      measured: overflowed snapshot dropped %.2f s after the write (poll interval 600 s)\n", gone!).utf8))

        // The origin has exactly what was written over what it had.
        try expectEqual(try lab.sha256(top, length: written), expectedHead, "origin: the bytes written")
        try expectEqual(try lab.sha256(top, offset: written, length: size - written), expectedTail, "origin: the bytes not written")
        try expect(try lab.sha256(top, length: size) != before, "origin did not change")
        try expectEqual(try lab.sha256(disk.path, length: size), try lab.sha256(top, length: size), "disk under the stack")
        try expect(try lab.sh("dmsetup", "table", "snapstack-vol").contains(" linear "), "vol's top is not linear again")
        try expect(!FileManager.default.fileExists(atPath: store), "store file \(store) left behind")
        try expect(!(try lab.sh("losetup", "-a")).contains(store), "store loop left attached")

        // The open one is marked invalid, and stays until it is closed.
        var marked = false
        for _ in 0..<100 {
            if try cli.rows("snapshots").first(where: { $0["name"] as? String == "open-s" })?["state"] as? String == "invalid" {
                marked = true
                break
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let snapshotRows = try cli.rows("snapshots")
        try expect(marked, "open-s not marked invalid: \(snapshotRows)")
        try expect(try lab.dmsetupNames().contains("snapstack-open-s"), "an open snapshot was removed")
        let overflows = try events(cli, kind: "overflow")
        let vol = overflows.first { $0["name"] as? String == "vol-s" }?["message"] as? String ?? ""
        try expect(vol.contains("invalidated") && vol.contains("dropping it"), "overflow event of vol-s: \(overflows)")
        let open = overflows.first { $0["name"] as? String == "open-s" }?["message"] as? String ?? ""
        try expect(open.contains("is open"), "overflow event of open-s: \(overflows)")
        try expect(try events(cli, kind: "drop").contains { $0["name"] as? String == "vol-s" }, "no drop event for vol-s")
        try watch.stop()

        // Closed, the next watch drops it at its first look.
        reader.terminate()
        reader.waitUntilExit()
        let again = Watch(state: cli.state, settings: StoreWatchSettings(enabled: false, pollInterval: .seconds(600)))
        defer { _ = try? again.stop() }
        var dropped = false
        for _ in 0..<200 {
            if !(try lab.dmsetupNames()).contains("snapstack-open-s") {
                dropped = true
                break
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        try again.stop()
        try expect(dropped, "the closed invalid snapshot was not dropped")
        try expectEqual(try cli.rows("snapshots").count, 0, "snapshots left")
        try cli.ok("unprotect", "vol")
        try cli.ok("unprotect", "open")
    }
}
