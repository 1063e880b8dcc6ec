import DeviceMapper
import KernelSimulator
@testable import Snapstack
import SnapstackErrors
import Testing

/// A merge while the origin has other snapshots, as `lvconvert --merge` allows: the others stay,
/// and the origin's table goes back to snapshot-origin for them afterwards.
@Suite struct MergeWithOthersTests {
    private func snapshot(_ lab: SimulatedLab, _ name: String) throws {
        var options = SnapshotOptions()
        options.name = name
        try lab.orchestrator().snapshot(["vol0"], options: options)
    }

    @Test("merging one snapshot keeps the others live and recorded; the top maps snapshot-origin for them, then linear after the last")
    func othersStay() throws {
        let lab = try SimulatedLab()
        try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0")
        try snapshot(lab, "a")
        try snapshot(lab, "b")
        #expect(try lab.orchestrator().merge(snapshot: "vol0-a") == .merged)
        #expect(try lab.orchestrator().snapshotSummaries().map(\.name) == ["vol0-b"])
        let devices = lab.kernel.capture().devices
        #expect(devices["snapstack-vol0-a"] == nil)
        #expect(devices["snapstack-vol0-b"]?.live != nil)
        #expect(devices["snapstack-vol0"]?.live?.lines.first?.target.type == "snapshot-origin")

        #expect(try lab.orchestrator().merge(snapshot: "vol0-b") == .merged)
        #expect(try lab.orchestrator().snapshotSummaries().isEmpty)
        #expect(lab.kernel.capture().devices["snapstack-vol0"]?.live?.lines.first?.target.type == "linear")
    }

    @Test("a second merge while one waits for the origin to close is refused, changing nothing")
    func oneMergeAtATime() throws {
        let lab = try SimulatedLab()
        try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0")
        try snapshot(lab, "a")
        try snapshot(lab, "b")
        lab.kernel.open("snapstack-vol0")
        #expect(try lab.orchestrator().merge(snapshot: "vol0-a") == .deferred)
        let before = try lab.picture()
        let error = #expect(throws: SnapstackError.self) { try lab.orchestrator().merge(snapshot: "vol0-b") }
        #expect(error?.kind == .refused)
        #expect(error?.why?.contains("vol0-a is waiting to merge") == true)
        #expect(try lab.picture() == before)
    }
}
