import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
@testable import Snapstack
import Testing

/// The order of a snapshot set's changes, decided from what the members' tops already are.
@Suite struct SnapshotPlanTests {
    static func options(_ name: String, store: String? = nil) -> SnapshotOptions {
        var options = SnapshotOptions()
        options.name = name
        options.size = .bytes(.mebibytes(2))
        options.store = store
        return options
    }

    @Test func everyStepOfAFreshSetHappensBeforeTheFreezeExceptTheSwap() throws {
        let lab = try SimulatedLab()
        try lab.protect(2)
        let plan = try lab.orchestrator().planSnapshotSet(["vol0", "vol1"], options: Self.options("s"))
        #expect(plan.steps == [
            .createStoreFile(member: 0), .attachStore(member: 0), .createStoreFile(member: 1), .attachStore(member: 1),
            .reached(.snapshotStoreAttached),
            .prepareSnapshot(member: 0), .loadOriginTable(member: 0), .prepareSnapshot(member: 1), .loadOriginTable(member: 1),
            .reached(.snapshotPreloaded), .readEras,
            .activateBeforeFreeze(members: [0, 1]), .reached(.snapshotActivated),
            .freeze(checkpoint: [0, 1], activateInside: []), .reached(.snapshotResumed),
        ])
        #expect(plan.members.map(\.snapshot.rawValue) == ["snapstack-vol0-s", "snapstack-vol1-s"])
        #expect(lab.kernel.capture().devices.count == 4, "planning changed the kernel")
    }

    @Test func aMemberWithSnapshotsKeepsItsTableAndItsNewSnapshotGoesLiveInsideTheFreeze() throws {
        let lab = try SimulatedLab()
        try lab.protect(2)
        _ = try lab.orchestrator().snapshot(["vol0"], options: Self.options("first"))
        let plan = try lab.orchestrator().planSnapshotSet(["vol0", "vol1"], options: Self.options("second"))
        #expect(plan.members.map(\.originLive) == [true, false])
        #expect(!plan.steps.contains(.loadOriginTable(member: 0)))
        #expect(plan.steps.contains(.loadOriginTable(member: 1)))
        #expect(plan.steps.contains(.activateBeforeFreeze(members: [1])))
        #expect(plan.steps.contains(.freeze(checkpoint: [0, 1], activateInside: [0])))
    }

    @Test func onlyMembersWithChangeTrackingGetANewEra() throws {
        let lab = try SimulatedLab()
        try lab.protect(1, cbt: false)
        let plan = try lab.orchestrator().planSnapshotSet(["vol0"], options: Self.options("s"))
        #expect(plan.steps.contains(.freeze(checkpoint: [], activateInside: [])))
    }

    @Test("sizes: whole chunks, at most the origin plus its metadata", arguments: [
        (SnapshotOptions.Size.percent(10), Bytes.mebibytes(100), Bytes(10_485_760)),
        (.percent(0.001), .mebibytes(100), Bytes(4096)),
        (.bytes(Bytes(5000)), .mebibytes(100), Bytes(8192)),
        (.percent(500), .mebibytes(16), Bytes(16 << 20 + 1 << 20 + 1 << 20)),
    ])
    func storeSize(size: SnapshotOptions.Size, origin: Bytes, expected: Bytes) {
        #expect(Orchestrator.storeSize(size, origin: origin, chunk: .kibibytes(4)) == expected)
    }
}
