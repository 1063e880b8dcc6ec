import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
@testable import Snapstack
import SnapstackErrors
import StateDatabase
@testable import Udev
import Testing

/// Change tracking across a stack's absence (a reboot, a disk unplugged): continuous only when
/// the disk's filesystem shows the stamp the daemon's clean stop recorded, interrupted with the
/// reason otherwise, over the simulated kernel whose disks carry a superblock.
@Suite struct ContinuityTests {
    /// The first 2 KiB of an ext4 filesystem: the fields a stamp reads, the rest zeros.
    static func ext4Head(mounts: UInt16 = 3, kibibytesWritten: UInt64 = 4096, writeTime: UInt32 = 1_764_000_000,
                         state: UInt16 = 1) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 2048)
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for index in 0..<width { bytes[1024 + offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        put(UInt64(writeTime), at: 0x30, width: 4)
        put(UInt64(mounts), at: 0x34, width: 2)
        put(0xEF53, at: 0x38, width: 2)
        put(UInt64(state), at: 0x3A, width: 2)
        for index in 0..<16 { bytes[1024 + 0x68 + index] = UInt8(0xA0 + index) }
        put(kibibytesWritten, at: 0x178, width: 8)
        return bytes
    }

    static func lab() throws -> SimulatedLab {
        let lab = try SimulatedLab()
        lab.kernel.writeHead("/dev/sda", ext4Head())
        try lab.protect(1)
        return lab
    }

    static func export(of device: DeviceRecord, era: Int64) -> ExportRecord {
        ExportRecord(id: "e1", deviceID: device.id, snapshotID: "s", snapshotName: "s1", kind: .full, state: .complete,
                     era: era, blockSizeBytes: 1 << 20, deviceSizeBytes: device.sizeBytes, imagePath: nil, format: "raw",
                     bytesRead: 0, bytesWritten: 0)
    }

    /// The era of vol0's live era layer.
    static func era(_ lab: SimulatedLab) -> Int64 {
        Int64(lab.kernel.capture().devices["snapstack-vol0-real"]!.era)
    }

    @Test("a clean stop with the top unused, then an unchanged filesystem: the rebuild keeps the tracking")
    func cleanStopKeepsTracking() throws {
        let lab = try Self.lab()
        #expect(try lab.orchestrator().recordCleanStop() == ["vol0"])
        let stamp = try #require(try lab.orchestrator().device(named: "vol0").cleanStopStamp)
        #expect(FilesystemStamp(parsing: stamp)?.ext?.mountCount == 3, "\(stamp)")
        let base = Self.export(of: try lab.orchestrator().device(named: "vol0"), era: Self.era(lab))
        lab.kernel.reboot()

        let plan = try lab.orchestrator().reconcile(dryRun: true)
        #expect(plan.map(\.action) == ["rebuild the stack over /dev/sda (8:0), keeping its change tracking: its filesystem is as the daemon's clean stop left it"])
        _ = try lab.orchestrator().reconcile()
        let device = try lab.orchestrator().device(named: "vol0")
        #expect(device.cleanStopStamp == nil, "the record is consumed by the rebuild")
        #expect(try lab.orchestrator().deviceSummary(named: "vol0").tracking == .continuous)
        try lab.orchestrator().checkTrackingContinuous(device, since: base)
        #expect(try lab.orchestrator().metricsInput().trackingInterruptions == 0)
        // A second reboot without a new clean stop: nothing vouches for the disk any more.
        lab.kernel.reboot()
        #expect(try lab.orchestrator().reconcile().first?.action.contains("change tracking interrupted: no clean stop") == true)
    }

    @Test("a filesystem mounted while the disk had no stack: the rebuild interrupts the tracking, naming what changed, and gives up the snapshots that missed those writes")
    func changedFilesystemInterrupts() throws {
        let lab = try Self.lab()
        try ReconcilePlanTests.snapshot(lab, ["vol0"], as: "keep")
        _ = try lab.orchestrator().recordCleanStop()
        // A full export of the first era. (The simulated era target starts again at era 1 when
        // it is built anew, where the kernel's goes on from its metadata: any era from before
        // the rebuild is earlier than the one it records.)
        let base = Self.export(of: try lab.orchestrator().device(named: "vol0"), era: 1)
        lab.kernel.reboot()
        // Mounted elsewhere and written: one more mount, 64 KiB more written.
        lab.kernel.writeHead("/dev/sda", Self.ext4Head(mounts: 4, kibibytesWritten: 4160, writeTime: 1_764_000_100))

        let plan = try lab.orchestrator().reconcile()
        #expect(plan.map(\.step) == ["rebuild-stack"])
        #expect(plan[0].action == "rebuild the stack over /dev/sda (8:0); change tracking interrupted and snapshots invalid: the filesystem on /dev/sda "
                + "changed while it had no stack: mount count 3 → 4, lifetime writes 4096 → 4160 KiB, last write time 1764000000 → 1764000100")
        #expect(try lab.orchestrator().snapshotSummaries().map(\.state) == [.invalid])
        #expect(lab.kernel.capture().devices["snapstack-vol0-keep"] == nil, "an invalid snapshot came back")
        let device = try lab.orchestrator().device(named: "vol0")
        #expect(device.trackingInterruptedEra == Self.era(lab), "the first era whose changes are complete is the live one")
        let summary = try lab.orchestrator().deviceSummary(named: "vol0")
        #expect(summary.tracking == .interrupted)
        #expect(summary.trackingInterruptedReason?.contains("mount count 3 → 4") == true)
        let refused = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().checkTrackingContinuous(device, since: base)
        }
        #expect(refused.kind == .trackingInterrupted)
        #expect(try lab.orchestrator().metricsInput().trackingInterruptions == 1)
        // An export from after the rebuild builds on exact tracking again.
        try lab.orchestrator().checkTrackingContinuous(device, since: Self.export(of: device, era: Self.era(lab)))
        #expect(try lab.orchestrator().reconcile().isEmpty)
    }

    @Test("no clean stop, a disk without an ext filesystem, a top in use at the stop: each interrupts the tracking at the rebuild")
    func nothingToProveInterrupts() throws {
        // A crash or a power cut: no record at all.
        var lab = try Self.lab()
        lab.kernel.reboot()
        var plan = try lab.orchestrator().reconcile()
        #expect(plan.first?.action.contains("change tracking interrupted: no clean stop of snapstack's daemon was recorded") == true, "\(plan)")
        #expect(try lab.orchestrator().deviceSummary(named: "vol0").tracking == .interrupted)

        // Another filesystem than ext: nothing recorded at the stop, interrupted at the rebuild.
        lab = try SimulatedLab()
        try lab.protect(1)
        #expect(try lab.orchestrator().recordCleanStop() == [])
        lab.kernel.reboot()
        plan = try lab.orchestrator().reconcile()
        #expect(plan.first?.action.contains("no clean stop") == true, "\(plan)")

        // Mounted at the stop: not recorded, and an earlier record is cleared.
        lab = try Self.lab()
        _ = try lab.orchestrator().recordCleanStop()
        lab.kernel.open("snapstack-vol0")
        #expect(try lab.orchestrator().recordCleanStop() == [])
        #expect(try lab.orchestrator().device(named: "vol0").cleanStopStamp == nil)
        lab.kernel.reboot()
        #expect(try lab.orchestrator().reconcile().first?.action.contains("no clean stop") == true)

        // The disk now holds something else: the stamp cannot be read from it.
        lab = try Self.lab()
        _ = try lab.orchestrator().recordCleanStop()
        lab.kernel.reboot()
        lab.kernel.writeHead("/dev/sda", [UInt8](repeating: 0x5A, count: 2048))
        plan = try lab.orchestrator().reconcile()
        #expect(plan.first?.action.contains("change tracking interrupted and snapshots invalid: /dev/sda no longer shows the filesystem the clean stop recorded: it holds no ext2, ext3, ext4 or xfs filesystem") == true,
                "\(plan)")
    }

    @Test("an interruption whose era a crash kept from being recorded refuses every incremental until reconcile records it")
    func interruptionWithoutEraIsFinishedByReconcile() throws {
        let lab = try Self.lab()
        var device = try lab.orchestrator().device(named: "vol0")
        let base = Self.export(of: device, era: Self.era(lab) + 100)
        // What `rebuild` leaves when it dies after the build, before the checkpoint.
        device.trackingInterruptedAt = Date()
        device.trackingInterruptedReason = "no clean stop"
        try lab.orchestrator().database.update(device)
        #expect(try lab.orchestrator().deviceSummary(named: "vol0").tracking == .interrupted)
        let refused = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().checkTrackingContinuous(device, since: base)
        }
        #expect(refused.kind == .trackingInterrupted)

        let eraBefore = Self.era(lab)
        let plan = try lab.orchestrator().reconcile()
        #expect(plan.map(\.step) == ["record-interruption-era"])
        #expect(Self.era(lab) == eraBefore + 1, "a new era is started")
        #expect(try lab.orchestrator().device(named: "vol0").trackingInterruptedEra == eraBefore + 1)
        #expect(try lab.orchestrator().reconcile().isEmpty)
    }

    @Test("a stack that outlives the clean stop (the daemon restarted, no reboot) drops its record: a later crash interrupts the tracking for want of a stop, and the snapshots stay valid")
    func restartForgetsTheCleanStop() throws {
        let lab = try Self.lab()
        try ReconcilePlanTests.snapshot(lab, ["vol0"], as: "keep")
        #expect(try lab.orchestrator().recordCleanStop() == ["vol0"])
        // The daemon starts again over the stacks still there: its reconcile has nothing to repair.
        #expect(try lab.orchestrator().reconcile().isEmpty)
        #expect(try lab.orchestrator().device(named: "vol0").cleanStopStamp == nil)
        #expect(try lab.orchestrator().reconcile(dryRun: true).isEmpty, "forgotten once")
        // The filesystem is mounted through the top and written, then the machine crashes.
        lab.kernel.writeHead("/dev/sda", Self.ext4Head(mounts: 4, kibibytesWritten: 4160, writeTime: 1_764_000_100))
        lab.kernel.reboot()

        let plan = try lab.orchestrator().reconcile()
        #expect(plan.first?.action.contains("change tracking interrupted: no clean stop") == true, "\(plan)")
        #expect(try lab.orchestrator().snapshotSummaries().map(\.state) == [.active], "those writes went through the copy-on-write")
        #expect(try lab.orchestrator().deviceSummary(named: "vol0").tracking == .interrupted)
    }

    @Test("a protected disk plugged in again without a clean stop has its tracking interrupted by the restack")
    func replugWithoutProofInterrupts() throws {
        let lab = try Self.lab()
        _ = try lab.orchestrator().recordCleanStop()
        lab.kernel.reboot()
        lab.kernel.writeHead("/dev/sda", Self.ext4Head(mounts: 9))
        let outcome = try lab.orchestrator().restack(UdevDevice(
            sysPath: "/sys/devices/virtual/block/sda", sysName: "sda", subsystem: "block", deviceType: "disk",
            deviceNode: "/dev/sda", number: DeviceNumber(major: 8, minor: 0), properties: ["ID_SERIAL": "disk-0", "ID_SERIAL_SHORT": "disk-0"]))
        #expect(outcome == .rebuilt(name: "vol0"))
        let summary = try lab.orchestrator().deviceSummary(named: "vol0")
        #expect(summary.tracking == .interrupted)
        #expect(summary.trackingInterruptedReason?.contains("mount count 3 → 9") == true, "\(summary)")
    }
}

/// `FilesystemStamp` on bytes from anywhere: what mkfs.ext4 writes, and what it does not.
@Suite struct FilesystemStampTests {
    @Test("the stamp of a filesystem made by mkfs.ext4 agrees with dumpe2fs; a mount changes it")
    func agreesWithDumpe2fs() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-stamp-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/fs.img"
        try run("/sbin/mkfs.ext4", "-q", "-F", "-U", "12345678-9abc-def0-1234-56789abcdef0", image, "8M")
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)).prefix(FilesystemStamp.bytesNeeded))
        let whole = try FilesystemStamp.read(bytes).get()
        let stamp = try #require(whole.ext)
        let dump = try run("/sbin/dumpe2fs", "-h", image)
        func field(_ name: String) -> String? {
            dump.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                .map { $0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces) }
        }
        #expect(stamp.uuid == field("Filesystem UUID"))
        #expect(field("Mount count") == "\(stamp.mountCount)")
        #expect(field("Filesystem state") == "clean" && stamp.state == 1)
        #expect(FilesystemStamp(parsing: whole.description) == whole, "\(whole)")

        // What a mount and a write leave, as tune2fs sets it: the mount count.
        try run("/sbin/tune2fs", "-C", "\(stamp.mountCount + 1)", image)
        let after = try FilesystemStamp.read(try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)).prefix(FilesystemStamp.bytesNeeded))).get()
        #expect(after != whole)
        #expect(whole.changes(to: after).hasPrefix("mount count \(stamp.mountCount) → \(stamp.mountCount + 1)"))
    }

    @Test("the stamp of a version 5 xfs agrees with xfs_db; its log sequence number moving changes it; version 4 gives a reason")
    func agreesWithXFSDB() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-stamp-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/xfs.img"
        try run("/usr/bin/truncate", "-s", "300M", image)
        try run("/sbin/mkfs.xfs", "-q", "-f", "-m", "uuid=12345678-9abc-def0-1234-56789abcdef0", image)
        func read() throws -> FilesystemStamp {
            try FilesystemStamp.read(try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)).prefix(FilesystemStamp.bytesNeeded))).get()
        }
        let whole = try read()
        guard case .xfs(let stamp) = whole else { Issue.record("not an xfs stamp: \(whole)"); return }
        // xfs_db prints "uuid = ...", "lsn = 0x...", "icount = N"...
        let printed = try run("/usr/sbin/xfs_db", "-r", "-c", "sb 0", "-c", "print uuid lsn icount ifree fdblocks", image)
        var fields: [String: String] = [:]
        for line in printed.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        #expect(fields["uuid"] == stamp.uuid && stamp.uuid == "12345678-9abc-def0-1234-56789abcdef0")
        #expect(fields["lsn"].flatMap { UInt64($0.hasPrefix("0x") ? String($0.dropFirst(2)) : $0, radix: 16) } == stamp.logSequence, "\(printed)")
        #expect(fields["icount"] == "\(stamp.inodes)" && fields["ifree"] == "\(stamp.freeInodes)" && fields["fdblocks"] == "\(stamp.freeBlocks)", "\(printed)")
        #expect(FilesystemStamp(parsing: whole.description) == whole, "\(whole)")

        // What a mount leaves (every mount but one with norecovery moves it): another LSN.
        try run("/usr/sbin/xfs_db", "-x", "-c", "sb 0", "-c", "write -d lsn 0x100000009", image)
        let after = try read()
        #expect(after != whole)
        #expect(whole.changes(to: after).hasPrefix("log sequence number \(String(stamp.logSequence, radix: 16)) → 100000009 (mounted)"), "\(whole.changes(to: after))")
        // Another kind of filesystem on the same disk.
        let ext = FilesystemStamp.ext(ExtStamp(uuid: stamp.uuid, mountCount: 1, writeTime: 1, kibibytesWritten: 1, state: 1, digest: 1))
        #expect(whole.changes(to: ext) == "another kind of filesystem (xfs → ext)")

        try run("/sbin/mkfs.xfs", "-q", "-f", "-m", "crc=0", image)
        #expect(throws: FilesystemStamp.Unstampable.self) { try read() }
        if case .failure(let why) = FilesystemStamp.read(try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)).prefix(FilesystemStamp.bytesNeeded))) {
            #expect(why.description.contains("version 4"), "\(why)")
        }
    }

    @Test("short, foreign and random first bytes give a reason, never a trap; foreign lines do not parse")
    func hostileBytes() {
        for count in [0, 1, 1024, 1080, 2047] {
            #expect(throws: FilesystemStamp.Unstampable.self) { try FilesystemStamp.read([UInt8](repeating: 0xFF, count: count)).get() }
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var bytes = (0..<2048).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if Bool.random(using: &generator) { bytes[1024 + 0x38] = 0x53; bytes[1024 + 0x39] = 0xEF }
            // Or the xfs magic and version 5, so that the xfs reader sees random fields too.
            if Bool.random(using: &generator) { bytes.replaceSubrange(0..<4, with: Array("XFSB".utf8)); bytes[0x65] = 0xB5 }
            if case .success(let stamp) = FilesystemStamp.read(bytes) {
                #expect(FilesystemStamp(parsing: stamp.description) == stamp)
            }
        }
        for line in ["", "ext", "xfs uuid=x", "xfs uuid=12345678-9abc-def0-1234-56789abcdef0 lsn=zz icount=1 ifree=1 fdblocks=1 sb=ff",
                     "xfs uuid=12345678-9abc-def0-1234-56789abcdef0 lsn=1 icount=1 ifree=1 fdblocks=1 fdblocks=2 sb=ff", "ext uuid=12345678-9abc-def0-1234-56789abcdef0 mounts=70000 written=1KiB wtime=1 state=1 sb=ff",
                     "ext uuid=12345678-9abc-def0-1234-56789abcdef0 mounts=1 written=1 wtime=1 state=1 sb=ff",
                     "ext uuid=12345678-9abc-def0-1234-56789abcdef0 mounts=1 written=1KiB wtime=1 state=1 sb=zz",
                     "ext uuid=short mounts=1 written=1KiB wtime=1 state=1 sb=ff", "ext = = = = = ="] {
            #expect(FilesystemStamp(parsing: line) == nil, "\(line)")
        }
    }

    @discardableResult
    func run(_ arguments: String...) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "\(arguments.joined(separator: " ")) exited \(process.terminationStatus)")
        return String(decoding: data, as: UTF8.self)
    }
}
