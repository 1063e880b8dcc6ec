import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
@testable import Snapstack
import SnapstackErrors
import SystemPackage
import Testing

/// The root filesystem, stacked by the initramfs: `protect --at-boot` records it and remakes
/// the initramfs, `initramfs stack` builds the stack from the plan written into it, reconcile
/// takes the stack over, and the shutdown's record decides whether the tracking continues.
@Suite struct RootFilesystemTests {
    static let root = SimulatedLab.disks[0]
    static let mountedAtRoot = DeviceUsage(mountPoints: ["/"], exclusivelyHeld: true)

    static func options(metadata: String? = SimulatedLab.storeGroup) -> ProtectOptions {
        var options = ProtectOptions(cbtBlock: .mebibytes(1))
        options.atBoot = true
        options.cbtMetadataGroup = metadata
        return options
    }

    /// A lab whose first disk holds / (an ext4 head), protected --at-boot; returns the plan the
    /// initramfs was made with.
    static func protectedRoot() throws -> (SimulatedLab, InitramfsPlan) {
        let lab = try SimulatedLab()
        lab.makeStoreGroup()
        lab.kernel.writeHead(root, ContinuityTests.ext4Head())
        lab.kernel.setDiskUsage(root, mountedAtRoot)
        try lab.orchestrator().protect(devicePath: root, name: "root", options: options())
        return (lab, try lab.orchestrator().initramfsPlan())
    }

    /// A boot: the kernel forgets its devices, the initramfs stacks from `plan` with a scratch
    /// state of its own, and / is mounted from what it returned.
    static func boot(_ lab: SimulatedLab, _ plan: InitramfsPlan) throws -> String? {
        lab.kernel.reboot()
        lab.kernel.setDiskUsage(root, DeviceUsage())
        let scratch = try Orchestrator(stateDirectory: FilePath(lab.root + "/run/initramfs"), lockTimeout: 1, kernel: lab.kernel.kernel)
        let top = scratch.stackInInitramfs(plan, root: root, wait: 0)
        if top != nil { lab.kernel.open("snapstack-root") }
        return top
    }

    /// What systemd-shutdown's hook does once / is read-only. The takeover could not find the
    /// stop volume's place on disk (a simulated volume has no dm table), so it is given here.
    static func cleanShutdown(_ lab: SimulatedLab) throws -> [String] {
        let device = try lab.orchestrator().device(named: "root")
        let (group, name) = try #require(device.stopVolume)
        let volume = try lab.kernel.facts(of: FilePath("/dev/\(group)/\(name)")).number
        let target = ShutdownTarget(deviceID: device.id, name: "root", top: "/dev/mapper/snapstack-root", disk: "\(volume)", offset: 0)
        let directory = lab.kernel.runtimeDirectory + "/shutdown"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try JSONEncoder().encode(target).write(to: URL(fileURLWithPath: directory + "/" + device.id))
        return Orchestrator.recordShutdown(host: lab.kernel, mountinfo: "22 1 8:0 / / ro,relatime shared:1 - ext4 /dev/mapper/snapstack-root ro\n")
    }

    static func tracking(_ lab: SimulatedLab) throws -> (DeviceSummary.Tracking, String?) {
        let summary = try #require(try lab.orchestrator().deviceSummaries().first { $0.name == "root" })
        return (summary.tracking, summary.trackingInterruptedReason)
    }

    @Test("--at-boot of / without --cbt-metadata is refused, naming it, and nothing changes")
    func rootNeedsMetadataVolume() throws {
        let lab = try SimulatedLab()
        lab.makeStoreGroup()
        lab.kernel.setDiskUsage(Self.root, Self.mountedAtRoot)
        let before = try lab.picture()
        let error = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().protect(devicePath: Self.root, name: "root", options: Self.options(metadata: nil))
        }
        #expect(error.kind == .refused)
        #expect(error.remedy?.contains("--cbt-metadata") == true, "remedy: \(error.remedy ?? "none")")
        #expect(try lab.picture() == before)
        #expect(lab.kernel.capture().initramfsUpdates == 0)
    }

    @Test("--at-boot of /: pending, its era metadata and stop volumes made, the initramfs remade, and the plan names it and reads back")
    func pendingRootIsPlanned() throws {
        let (lab, plan) = try Self.protectedRoot()
        let summary = try #require(try lab.orchestrator().deviceSummaries().first)
        #expect(summary.state == .pending)
        #expect(lab.kernel.capture().initramfsUpdates == 1)
        #expect(lab.kernel.capture().devices.isEmpty, "nothing is stacked before the boot")
        let volumes = try lab.kernel.volumes(tagged: Orchestrator.volumeTag).map(\.name)
        #expect(volumes == ["snapstack-\(summary.id)-era", "snapstack-\(summary.id)-stop"])
        #expect(plan.deviceNames == ["root"])
        #expect(try InitramfsPlan(decoding: try plan.encoded()).deviceNames == ["root"])
        // The pending record's volumes are not orphans.
        #expect(try lab.orchestrator().reconcile(dryRun: true).map(\.step) == ["wait-for-boot"])
    }

    @Test("unprotect of a pending / removes its volumes and remakes the initramfs, which then carries nothing of it")
    func unprotectPendingRoot() throws {
        let (lab, _) = try Self.protectedRoot()
        try lab.orchestrator().unprotect(name: "root")
        #expect(lab.kernel.capture().initramfsUpdates == 2)
        #expect(try lab.kernel.volumes(tagged: Orchestrator.volumeTag).isEmpty)
        #expect(try lab.orchestrator().initramfsPlan().isEmpty)
    }

    @Test("a failed update-initramfs leaves nothing of the protect: no record, no volume")
    func failedInitramfsRollsBack() throws {
        let lab = try SimulatedLab()
        lab.makeStoreGroup()
        lab.kernel.setDiskUsage(Self.root, Self.mountedAtRoot)
        lab.kernel.failInitramfs = true
        let before = try lab.picture()
        #expect(throws: SnapstackError.self) {
            try lab.orchestrator().protect(devicePath: Self.root, name: "root", options: Self.options())
        }
        #expect(try lab.picture() == before)
        #expect(try lab.kernel.volumes(tagged: Orchestrator.volumeTag).isEmpty)
    }

    @Test("a plan that is garbage, of another version, or names a file for its metadata is refused")
    func hostilePlans() throws {
        let (_, plan) = try Self.protectedRoot()
        let good = String(decoding: try plan.encoded(), as: UTF8.self)
        for text in ["", "{", "[]", good.replacingOccurrences(of: "\"version\":1", with: "\"version\":2"),
                     good.replacingOccurrences(of: "storevg\\/snapstack-", with: "\\/var\\/lib\\/snapstack\\/cbt\\/"),
                     good.replacingOccurrences(of: "\"name\":\"root\"", with: "\"name\":\"a b\\nc\"")] {
            #expect(throws: SnapstackError.self, "\(text.prefix(60))") { try InitramfsPlan(decoding: Data(text.utf8)) }
        }
    }

    @Test("the initramfs stacks /, the daemon takes it over, a clean shutdown's record keeps the tracking, a crash interrupts it, and a changed filesystem gives up the snapshots")
    func bootsAndShutdowns() throws {
        let (lab, plan) = try Self.protectedRoot()

        // First boot: the initramfs builds the stack; reconcile takes it over with new tracking.
        #expect(try Self.boot(lab, plan) == "/dev/mapper/snapstack-root")
        #expect(lab.kernel.capture().devices["snapstack-root-real"] != nil)
        #expect(try lab.orchestrator().reconcile().map(\.step) == ["take-over-early-stack"])
        #expect(try lab.orchestrator().deviceSummaries().first?.state == .protected)
        #expect(try Self.tracking(lab).0 == .continuous)
        #expect(try lab.orchestrator().reconcile().isEmpty, "a second reconcile finds nothing to do")

        // A clean shutdown records the stamp; the next initramfs finds it and the same disk.
        let stamp = try FilesystemStamp.read(ContinuityTests.ext4Head()).get()
        #expect(try Self.cleanShutdown(lab) == ["root: clean shutdown recorded: \(stamp)"])
        #expect(try Self.boot(lab, plan) != nil)
        // Before anything judged the boot, no incremental is made across it.
        do {
            let orchestrator = try lab.orchestrator()
            let device = try orchestrator.device(named: "root")
            let unjudged = try #require(throws: SnapstackError.self) {
                try orchestrator.checkTrackingContinuous(device, since: ContinuityTests.export(of: device, era: 1))
            }
            #expect(unjudged.kind == .trackingInterrupted)
        }
        let kept = try lab.orchestrator().reconcile()
        #expect(kept.map(\.step) == ["take-over-early-stack"])
        #expect(kept.first?.action.contains("keeping its change tracking") == true, "\(kept)")
        #expect(try Self.tracking(lab).0 == .continuous)

        // A crash: the record was used up at the last boot, so nothing proves the disk.
        #expect(try Self.boot(lab, plan) != nil)
        _ = try lab.orchestrator().reconcile()
        let (state, why) = try Self.tracking(lab)
        #expect(state == .interrupted)
        #expect(why?.hasPrefix("no clean shutdown of /dev/sda was recorded") == true, "\(why ?? "none")")

        // A snapshot, a clean shutdown, then the disk written between boots: snapshots invalid.
        var options = SnapshotOptions()
        options.name = "keep"
        options.store = SimulatedLab.storeGroup
        options.size = .bytes(.mebibytes(8))
        try lab.orchestrator().snapshot(["root"], options: options)
        _ = try Self.cleanShutdown(lab)
        lab.kernel.writeHead(Self.root, ContinuityTests.ext4Head(mounts: 4))
        #expect(try Self.boot(lab, plan) != nil)
        let bypassed = try lab.orchestrator().reconcile()
        #expect(bypassed.map(\.step) == ["take-over-early-stack"], "\(bypassed)")
        #expect(try Self.tracking(lab).1?.contains("mount count 3 → 4") == true)
        #expect(try lab.orchestrator().snapshotSummaries().map(\.state) == [.invalid])
    }

    @Test("when / cannot be pointed at the top device, the initramfs takes the stack back: the disk free to mount, no marker left, and the daemon's reconcile does not take over a stack that is gone")
    func unstackFreesTheDisk() throws {
        let (lab, plan) = try Self.protectedRoot()
        lab.kernel.reboot()
        lab.kernel.setDiskUsage(Self.root, DeviceUsage())
        let scratch = try Orchestrator(stateDirectory: FilePath(lab.root + "/run/initramfs"), lockTimeout: 1, kernel: lab.kernel.kernel)
        let top = try #require(scratch.stackInInitramfs(plan, root: Self.root, wait: 0))
        let id = try #require(plan.devices.first?.id)
        let marker = lab.kernel.runtimeDirectory + "/early/" + id
        #expect(FileManager.default.fileExists(atPath: marker))

        #expect(try scratch.unstackInInitramfs(plan, top: "/dev/mapper/snapstack-other") == nil, "a top of no planned device")
        #expect(try scratch.unstackInInitramfs(plan, top: top) == "root")
        let left = try lab.kernel.list().map(\.name).filter { $0.hasPrefix("snapstack-root") }
        #expect(left.isEmpty, "\(left)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(try scratch.unstackInInitramfs(plan, top: top) == "root", "a second run changes nothing and fails nothing")
        // / mounted from the bare disk: the daemon finds no stack to take over, and leaves the
        // mounted disk alone.
        lab.kernel.setDiskUsage(Self.root, Self.mountedAtRoot)
        #expect(!(try lab.orchestrator().reconcile(dryRun: true).map(\.step).contains("take-over-early-stack")))
    }

    @Test("the shutdown records nothing while / is writable")
    func writableRootRecordsNothing() throws {
        let (lab, plan) = try Self.protectedRoot()
        _ = try Self.boot(lab, plan)
        _ = try lab.orchestrator().reconcile()
        let device = try lab.orchestrator().device(named: "root")
        let directory = lab.kernel.runtimeDirectory + "/shutdown"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try JSONEncoder().encode(ShutdownTarget(deviceID: device.id, name: "root", top: "/dev/mapper/snapstack-root", disk: "8:240", offset: 0))
            .write(to: URL(fileURLWithPath: directory + "/" + device.id))
        let said = Orchestrator.recordShutdown(host: lab.kernel, mountinfo: "22 1 8:0 / / rw,relatime shared:1 - ext4 /dev/mapper/snapstack-root rw\n")
        #expect(said.first?.hasPrefix("/ is not read-only") == true)
        _ = try Self.boot(lab, plan)
        _ = try lab.orchestrator().reconcile()
        #expect(try Self.tracking(lab).0 == .interrupted)
    }

    @Test("a stop record reads back only whole: zeros, garbage and a truncated line are none")
    func stopRecords() throws {
        let stamp = try #require(try? FilesystemStamp.read(ContinuityTests.ext4Head()).get())
        let record = StopRecord(deviceID: "abc123", stamp: stamp)
        #expect(StopRecord(reading: record.bytes + [UInt8](repeating: 0, count: 100)) == record)
        #expect(StopRecord(reading: [UInt8](repeating: 0, count: 4096)) == nil)
        #expect(StopRecord(reading: Array(record.bytes.dropLast())) == nil)
        #expect(StopRecord(reading: Array("snapstack-stop 2 abc123 \(stamp)\n".utf8)) == nil)
        #expect(StopRecord(reading: [0xFF, 0xFE, 0x0A]) == nil)
        #expect(Orchestrator.isReadOnly(mountPoint: "/", mountinfo: "1 0 8:0 / / rw - ext4 x rw\n2 1 8:0 / / ro,noatime - ext4 x ro\n"))
        #expect(!Orchestrator.isReadOnly(mountPoint: "/", mountinfo: "2 1 8:0 / / ro - ext4 x ro\n3 1 8:0 / / rw - ext4 x rw\n"))
        #expect(!Orchestrator.isReadOnly(mountPoint: "/", mountinfo: "garbage"))
    }
}

/// / on an LVM volume: adopted online, and adopted again by the initramfs at every boot, where
/// LVM has activated it with its plain table, before / is mounted from it.
@Suite struct RootVolumeTests {
    static let volume = "vg-root"
    static let lvmTable = "0 65536 linear 8:0 2048"

    /// LVM's activation of the volume at boot, with its plain table.
    static func activate(_ lab: SimulatedLab) throws {
        try lab.kernel.create(try DMName(volume), uuid: try DMUUID("LVM-rootrootrootrootroot"),
                              table: try Table(parsing: lvmTable), readOnly: false, udevFlags: [])
    }

    @Test("a volume holding / is adopted online, the initramfs remade; at boot the initramfs adopts it again, $ROOT unchanged, the daemon takes it over, and a clean shutdown's record keeps the tracking")
    func rootVolume() throws {
        let lab = try SimulatedLab()
        lab.makeStoreGroup()
        lab.kernel.writeHead(SimulatedLab.disks[0], ContinuityTests.ext4Head())
        try Self.activate(lab)
        lab.kernel.open(Self.volume)
        lab.kernel.setUsage(ofPath: "/dev/mapper/\(Self.volume)", RootFilesystemTests.mountedAtRoot)
        var options = ProtectOptions(cbtBlock: .mebibytes(1))
        options.cbtMetadataGroup = SimulatedLab.storeGroup
        let summary = try lab.orchestrator().protect(devicePath: "/dev/mapper/\(Self.volume)", name: "root", options: options)
        #expect(summary.state == .protected && summary.adopted == "vg/root")
        #expect(lab.kernel.capture().initramfsUpdates == 1)
        let plan = try lab.orchestrator().initramfsPlan()
        #expect(plan.deviceNames == ["root"])

        func boot() throws -> String? {
            lab.kernel.reboot()
            try Self.activate(lab)
            let scratch = try Orchestrator(stateDirectory: FilePath(lab.root + "/run/initramfs"), lockTimeout: 1, kernel: lab.kernel.kernel)
            let top = scratch.stackInInitramfs(plan, root: "/dev/mapper/\(Self.volume)", wait: 0)
            lab.kernel.open(Self.volume)
            return top
        }
        #expect(try boot() == nil, "an adopted volume keeps its node: $ROOT stays")
        let real = try #require(try lab.kernel.info(try DMName("snapstack-root-real"))).number
        #expect(try lab.kernel.table(try DMName(Self.volume)).description == "0 65536 linear \(real) 0")
        #expect(try lab.orchestrator().reconcile().map(\.step) == ["take-over-early-stack"])
        let interrupted = try #require(try lab.orchestrator().deviceSummaries().first)
        #expect(interrupted.tracking == .interrupted, "no shutdown was recorded before this boot")

        // A clean shutdown (the record placed as the takeover would, had the volume a dm table).
        let device = try lab.orchestrator().device(named: "root")
        let (group, name) = try #require(device.stopVolume)
        let stop = try lab.kernel.facts(of: FilePath("/dev/\(group)/\(name)")).number
        let directory = lab.kernel.runtimeDirectory + "/shutdown"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try JSONEncoder().encode(ShutdownTarget(deviceID: device.id, name: "root", top: "/dev/mapper/\(Self.volume)", disk: "\(stop)", offset: 0))
            .write(to: URL(fileURLWithPath: directory + "/" + device.id))
        let said = Orchestrator.recordShutdown(host: lab.kernel, mountinfo: "22 1 254:0 / / ro - ext4 /dev/mapper/vg-root ro\n")
        #expect(said.first?.contains("clean shutdown recorded") == true, "\(said)")
        _ = try boot()
        let kept = try lab.orchestrator().reconcile()
        #expect(kept.map(\.step) == ["take-over-early-stack"])
        #expect(kept.first?.action.contains("keeping its change tracking") == true, "\(kept)")
        #expect(try lab.orchestrator().deviceSummaries().first?.tracking == .interrupted,
                "the interruption of the boot before stays until a full export")
    }
}
