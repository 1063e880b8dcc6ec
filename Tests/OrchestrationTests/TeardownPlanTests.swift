import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
@testable import Snapstack
import Testing

/// The order in which drop, merge and unprotect take things apart, and that a teardown plan
/// run a second time (as reconcile does after a crash) finds its work done.
@Suite struct TeardownPlanTests {
    static func snapshotOptions(_ name: String) -> SnapshotOptions {
        var options = SnapshotOptions()
        options.name = name
        options.size = .bytes(.mebibytes(2))
        return options
    }

    @Test func aDropRemovesTheSnapshotDeviceBeforeItsRecordAndTheOriginTableAfter() throws {
        let lab = try SimulatedLab()
        try lab.protect(1)
        let orchestrator = try lab.orchestrator()
        _ = try orchestrator.snapshot(["vol0"], options: Self.snapshotOptions("s"))
        let (snapshot, device) = try orchestrator.snapshot(named: "vol0-s")
        #expect(try Teardown.drop(snapshot, of: device).map(\.description) == [
            "remove-device snapstack-vol0-s", "failpoint drop.snapshot-removed", "forget-snapshot s",
            "restore-top-table vol0", "failpoint drop.origin-reloaded", "remove-snapshot-artifacts vol0-s",
        ])
    }

    @Test func aMergeRemovesTheSnapshotBeforeTheTopTurnsToSnapshotMerge() throws {
        let lab = try SimulatedLab()
        try lab.protect(1)
        let orchestrator = try lab.orchestrator()
        _ = try orchestrator.snapshot(["vol0"], options: Self.snapshotOptions("s"))
        let (snapshot, device) = try orchestrator.snapshot(named: "vol0-s")
        #expect(try Teardown.startMerge(snapshot, of: device).map(\.description) == [
            "remove-device snapstack-vol0-s", "failpoint merge.snapshot-removed",
            "restore-top-table vol0", "failpoint merge.started",
        ])
        #expect(Teardown.finishMerge(snapshot, of: device).map(\.description) == [
            "forget-snapshot s", "restore-top-table vol0", "remove-snapshot-artifacts vol0-s",
        ])
    }

    @Test(arguments: [true, false])
    func anUnprotectRemovesTheTopFirstAndForgetsTheDeviceLast(cbt: Bool) throws {
        let lab = try SimulatedLab()
        try lab.protect(1, cbt: cbt)
        let device = try lab.orchestrator().device(named: "vol0")
        let metadata = cbt ? ["detach-metadata \(lab.stateDirectory)/cbt/\(device.id).era delete"] : []
        #expect(try Teardown.unprotect(device).map(\.description) == [
            "remove-device snapstack-vol0", "failpoint unprotect.top-removed",
            "remove-device snapstack-vol0-real", "failpoint unprotect.real-removed",
        ] + metadata + ["withdraw-member vol0", "forget-device vol0"])
        // A rebuild over the same disk keeps the era metadata.
        #expect(try Teardown.removeStack(device, deleteMetadata: false).contains(.detachMetadata(
            path: "\(lab.stateDirectory)/cbt/\(device.id).era", delete: false)) == cbt)
    }

    @Test func aTeardownPlanRunTwiceFindsItsWorkDone() throws {
        let lab = try SimulatedLab()
        try lab.protect(1)
        _ = try lab.orchestrator().snapshot(["vol0"], options: Self.snapshotOptions("s"))
        let (snapshot, device) = try lab.orchestrator().snapshot(named: "vol0-s")
        let drop = try Teardown.drop(snapshot, of: device)
        try lab.orchestrator().run(drop)
        let once = try lab.picture()
        #expect(once.devices.keys.sorted() == ["snapstack-vol0", "snapstack-vol0-real"])
        #expect(once.devices["snapstack-vol0"]?.live?.lines.first?.target.type == "linear")
        #expect(once.files == ["cbt/\(device.id).era"])
        try lab.orchestrator().run(drop)
        #expect(try lab.picture() == once)
        let unprotect = try Teardown.unprotect(device)
        try lab.orchestrator().run(unprotect)
        try lab.orchestrator().run(unprotect)
        let gone = try lab.picture()
        #expect(gone.devices.isEmpty && gone.loops.isEmpty && gone.files.isEmpty && gone.records.isEmpty, "\(gone)")
    }
}
