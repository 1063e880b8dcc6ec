import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
@testable import Snapstack
import Testing

/// The order in which a stack is built — by protect, and again over the disk by reconcile and
/// hotplug — and that a stack plan run over a complete stack changes nothing.
@Suite struct StackPlanTests {
    @Test func protectMakesTheMetadataThenRealThenTopAndHidesTheDiskLast() throws {
        let lab = try SimulatedLab()
        try lab.protect(1)
        let device = try lab.orchestrator().device(named: "vol0")
        let metadata = "\(lab.stateDirectory)/cbt/\(device.id).era"
        let size = Orchestrator.metadataSize(blocks: SimulatedLab.diskSize.rawValue / Bytes.mebibytes(1).rawValue + 1)
        #expect(try StackBuild.plan(device, newMetadata: true, withSnapshots: false).map(\.description) == [
            "create-metadata \(metadata) \(size.rawValue)", "attach-metadata \(metadata)", "failpoint protect.metadata-attached",
            "create-real snapstack-vol0-real", "failpoint protect.real-created",
            "create-top snapstack-vol0", "publish-member", "failpoint protect.top-created",
        ])
    }

    @Test func aRebuildKeepsTheMetadataAndBringsSnapshotsBackBeforeTheTop() throws {
        let lab = try SimulatedLab()
        try lab.protect(1, cbt: false)
        let device = try lab.orchestrator().device(named: "vol0")
        #expect(try StackBuild.plan(device, newMetadata: false, withSnapshots: true).map(\.description) == [
            "create-real snapstack-vol0-real", "failpoint protect.real-created", "activate-snapshots",
            "create-top snapstack-vol0", "publish-member", "failpoint protect.top-created",
        ])
    }

    @Test func aStackPlanRunOverACompleteStackChangesNothing() throws {
        let lab = try SimulatedLab()
        try lab.protect(1)
        var options = SnapshotOptions()
        options.name = "s"
        options.size = .bytes(.mebibytes(2))
        _ = try lab.orchestrator().snapshot(["vol0"], options: options)
        let before = try lab.picture()
        let device = try lab.orchestrator().device(named: "vol0")
        try lab.orchestrator().run(try StackBuild.plan(device, newMetadata: false, withSnapshots: true),
                                   for: device, source: DeviceNumber(major: 8, minor: 0))
        #expect(try lab.picture() == before)
    }
}
