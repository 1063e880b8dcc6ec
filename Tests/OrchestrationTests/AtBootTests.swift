import BlockIO
import KernelSimulator
@testable import Snapstack
import SnapstackErrors
import Testing

/// `protect --at-boot`: a mounted partition that device-mapper cannot slide under is recorded
/// as pending and stacked by reconcile at the next boot, before anything mounts it.
@Suite struct AtBootTests {
    static let mounted = DeviceUsage(mountPoints: ["/srv"], exclusivelyHeld: true)

    func atBoot() -> ProtectOptions {
        var options = ProtectOptions(cbtBlock: .mebibytes(1))
        options.atBoot = true
        return options
    }

    @Test("a mounted disk is refused without --at-boot, the refusal names it, and nothing changes")
    func plainProtectNamesAtBoot() throws {
        let lab = try SimulatedLab()
        lab.kernel.setDiskUsage(SimulatedLab.disks[0], Self.mounted)
        let before = try lab.picture()
        let error = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0", options: ProtectOptions(cbtBlock: .mebibytes(1)))
        }
        #expect(error.kind == .refused)
        #expect(error.remedy?.contains("--at-boot") == true, "remedy: \(error.remedy ?? "none")")
        #expect(try lab.picture() == before)
    }

    @Test("--at-boot records a mounted disk as pending and touches nothing; reconcile waits while it is mounted, and builds its stack once it is free, as after a reboot")
    func pendingUntilFree() throws {
        let lab = try SimulatedLab()
        lab.kernel.setDiskUsage(SimulatedLab.disks[0], Self.mounted)
        let before = lab.kernel.capture()
        let summary = try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0", options: atBoot())
        #expect(summary.state == .pending)
        #expect(summary.path == "/dev/mapper/snapstack-vol0")
        #expect(lab.kernel.capture() == before, "protect --at-boot changed the kernel's state")
        #expect(lab.files().isEmpty)

        var options = SnapshotOptions()
        options.name = "s"
        let refusal = try #require(throws: SnapstackError.self) { try lab.orchestrator().snapshot(["vol0"], options: options) }
        #expect(refusal.kind == .refused)

        // Still mounted: reconcile says why it waits, and changes nothing.
        let waiting = try lab.orchestrator().reconcile()
        #expect(waiting.map(\.step) == ["wait-for-boot"])
        #expect(waiting.first?.action.contains("mounted on /srv") == true)
        #expect(lab.kernel.capture() == before)

        // The next boot: nothing has mounted it yet when the daemon reconciles.
        lab.kernel.reboot()
        lab.kernel.setDiskUsage(SimulatedLab.disks[0], DeviceUsage())
        let built = try lab.orchestrator().reconcile()
        #expect(built.map(\.step) == ["build-pending-stack"])
        let devices = lab.kernel.capture().devices
        #expect(devices["snapstack-vol0"] != nil && devices["snapstack-vol0-real"] != nil)
        let protected = try #require(try lab.orchestrator().deviceSummaries().first)
        #expect(protected.state == .protected)
        #expect(protected.tracking == .continuous)
        #expect(lab.files() == ["cbt/\(protected.id).era"])
        try lab.orchestrator().snapshot(["vol0"], options: options)

        // A second reconcile finds nothing to do.
        #expect(try lab.orchestrator().reconcile().isEmpty)
    }

    @Test("--at-boot of a disk not in use protects it at once")
    func freeDiskNow() throws {
        let lab = try SimulatedLab()
        let summary = try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0", options: atBoot())
        #expect(summary.state == .protected)
        #expect(lab.kernel.capture().devices["snapstack-vol0"] != nil)
    }

    @Test("unprotect of a pending device forgets it and changes nothing else")
    func unprotectPending() throws {
        let lab = try SimulatedLab()
        lab.kernel.setDiskUsage(SimulatedLab.disks[0], Self.mounted)
        let before = try lab.picture()
        try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0", options: atBoot())
        try lab.orchestrator().unprotect(name: "vol0")
        #expect(try lab.picture() == before)
    }
}
