import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
import Snapstack
import Testing

/// reconcile's plans for what happens to a server: a reboot, a disk that does not come back
/// (or comes back elsewhere), a growth cut short; and that running the plan reaches a state
/// with nothing left to do.
@Suite struct ReconcilePlanTests {
    static func snapshot(_ lab: SimulatedLab, _ names: [String], as name: String) throws {
        var options = SnapshotOptions()
        options.name = name
        options.size = .bytes(.mebibytes(2))
        _ = try lab.orchestrator().snapshot(names, options: options)
    }

    @Test func afterARebootTheStacksAreRebuiltWithTheirSnapshotsAndTracking() throws {
        let lab = try SimulatedLab()
        lab.kernel.writeHead("/dev/sda", ContinuityTests.ext4Head())
        try lab.protect(2)
        try Self.snapshot(lab, ["vol0"], as: "keep")
        // The daemon's stop: vol0's ext4 vouches for its disk; vol1 holds no filesystem.
        #expect(try lab.orchestrator().recordCleanStop() == ["vol0"])
        let before = lab.kernel.capture()
        let era = before.devices["snapstack-vol0-real"]!.era
        lab.kernel.reboot()

        let plan = try lab.orchestrator().reconcile(dryRun: true)
        #expect(plan.map(\.step) == ["rebuild-stack", "rebuild-stack"])
        #expect(plan.map(\.subject) == ["vol0", "vol1"])
        #expect(plan[0].action == "rebuild the stack over /dev/sda (8:0), keeping its change tracking: its filesystem is as the daemon's clean stop left it")
        #expect(plan[1].action.hasPrefix("rebuild the stack over /dev/sdb (8:16); change tracking interrupted: no clean stop"), "\(plan[1].action)")
        #expect(lab.kernel.capture().devices.isEmpty, "a dry run changed the kernel")

        _ = try lab.orchestrator().reconcile()
        let after = lab.kernel.capture()
        #expect(Set(after.devices.keys) == Set(before.devices.keys))
        for (name, device) in before.devices {
            #expect(after.devices[name]?.live?.lines.map(\.target.type) == device.live?.lines.map(\.target.type), "\(name)")
        }
        // The era metadata is the same file, attached again, not a new one.
        #expect(lab.files().filter { $0.hasPrefix("cbt/") }.count == 2)
        #expect(after.devices["snapstack-vol0-real"]!.era == 1 && era >= 2, "a rebuilt era target starts at its kernel's era")
        #expect(try lab.violationsAfterReconcile().isEmpty)
    }

    @Test func aDiskThatDoesNotComeBackIsWaitedForAndFoundAgainByIdentity() throws {
        let lab = try SimulatedLab()
        try lab.protect(2)
        lab.kernel.reboot()
        lab.kernel.unplug("/dev/sdb")

        var plan = try lab.orchestrator().reconcile()
        #expect(plan.map(\.step) == ["rebuild-stack", "wait-for-disk"])
        #expect(lab.kernel.capture().devices["snapstack-vol1"] == nil)

        // The same disk (its serial) comes back under another name and number.
        lab.kernel.plug("/dev/sdx", number: DeviceNumber(major: 65, minor: 0), size: SimulatedLab.diskSize, serial: "disk-1")
        plan = try lab.orchestrator().reconcile()
        #expect(plan.map(\.step) == ["rebuild-stack"])
        #expect(plan.first?.action.contains("/dev/sdx (65:0)") == true, "\(plan)")
        let real = lab.kernel.capture().devices["snapstack-vol1-real"]?.live
        guard case .era(let era)? = real?.lines.first?.target else {
            Issue.record("vol1-real is not an era target: \(String(describing: real))")
            return
        }
        #expect(era.origin == .number(DeviceNumber(major: 65, minor: 0)))
        #expect(try lab.orchestrator().deviceSummaries().first { $0.name == "vol1" }?.sourcePath == "/dev/sdx")
        #expect(try lab.violationsAfterReconcile().isEmpty)
    }

    @Test func aDiskOfTheSameSizeWithAnotherIdentityIsNotTaken() throws {
        let lab = try SimulatedLab()
        try lab.protect(2)
        lab.kernel.reboot()
        lab.kernel.unplug("/dev/sdb")
        lab.kernel.plug("/dev/sdx", number: DeviceNumber(major: 65, minor: 0), size: SimulatedLab.diskSize, serial: "another")
        let plan = try lab.orchestrator().reconcile()
        #expect(plan.map(\.step) == ["rebuild-stack", "wait-for-disk"])
    }

    @Test func aGrowthCutShortIsFinishedToTheSizeAsked() throws {
        let lab = try SimulatedLab()
        try lab.protect()
        try Self.snapshot(lab, ["vol0"], as: "s")
        let reached = try lab.crash(at: .extendFileGrown) { _ = try $0.extend(snapshot: "vol0-s", .to(.mebibytes(6))) }
        #expect(reached)
        let plan = try lab.orchestrator().reconcile(dryRun: true)
        #expect(plan.map(\.step) == ["finish-growth"])
        #expect(plan.first?.subject == "vol0-s")
        _ = try lab.orchestrator().reconcile()
        let snapshot = try #require(try lab.orchestrator().snapshotSummaries().first)
        #expect(snapshot.storeSize == .mebibytes(6))
        // The kernel sees the new size: the loop device under the snapshot was refreshed.
        #expect(lab.kernel.capture().loops.values.first { $0.file.hasSuffix(".cow") }?.size == .mebibytes(6))
        #expect(try lab.violationsAfterReconcile().isEmpty)
    }

    @Test func orphansAreRemovedSnapshotsFirstAndAnOpenOneIsLeftAlone() throws {
        let lab = try SimulatedLab()
        try lab.protect()
        try Self.snapshot(lab, ["vol0"], as: "s")
        // The database is lost; the kernel keeps the devices.
        try FileManager.default.removeItem(atPath: lab.stateDirectory.string + "/snapstack.db")
        try? FileManager.default.removeItem(atPath: lab.stateDirectory.string + "/snapstack.db-wal")
        try? FileManager.default.removeItem(atPath: lab.stateDirectory.string + "/snapstack.db-shm")
        lab.kernel.open("snapstack-vol0")
        let plan = try lab.orchestrator().reconcile()
        // The open top stays, and so does the layer it holds; the snapshot goes first of all.
        #expect(plan.map(\.step) == ["leave-open-orphan", "remove-orphan", "leave-open-orphan",
                                     "detach-orphan-loop", "detach-orphan-loop", "delete-orphan-file", "delete-orphan-file"],
                "\(plan.map { "\($0.step) \($0.subject)" })")
        #expect(plan.map(\.subject).prefix(3) == ["snapstack-vol0", "snapstack-vol0-s", "snapstack-vol0-real"])
        let state = lab.kernel.capture()
        #expect(Set(state.devices.keys) == ["snapstack-vol0", "snapstack-vol0-real"])
        // The era metadata's loop device is still held by -real: detached lazily, its file kept.
        #expect(state.loops.values.map(\.file).allSatisfy { $0.hasSuffix(".era") } && state.loops.count == 1)
        #expect(lab.files().count == 1 && lab.files().first?.hasPrefix("cbt/") == true, "\(lab.files())")
        // Once it is closed, the next reconcile removes the rest.
        lab.kernel.open("snapstack-vol0", by: -1)
        _ = try lab.orchestrator().reconcile()
        #expect(lab.kernel.capture().devices.isEmpty && lab.kernel.capture().loops.isEmpty && lab.files().isEmpty)
    }
}
