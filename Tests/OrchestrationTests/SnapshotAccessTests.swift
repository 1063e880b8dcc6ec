import KernelSimulator
@testable import Snapstack
import Testing

/// Snapshot devices are read-only unless taken --writable: a write to a snapshot passes no era
/// layer, so an incremental export built on it would silently miss it.
@Suite struct SnapshotAccessTests {
    @Test("a snapshot device is read-only by default and writable when asked; reconcile after a reboot keeps each as it was",
          arguments: [false, true])
    func accessSurvivesReconcile(writable: Bool) throws {
        let lab = try SimulatedLab()
        try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0")
        var options = SnapshotOptions()
        options.name = "s"
        options.writable = writable
        try lab.orchestrator().snapshot(["vol0"], options: options)
        #expect(lab.kernel.capture().devices["snapstack-vol0-s"]?.readOnly == !writable)
        #expect(try lab.orchestrator().snapshotSummaries().map(\.writable) == [writable])

        lab.kernel.reboot()
        #expect(lab.kernel.capture().devices["snapstack-vol0-s"] == nil)
        try lab.orchestrator().reconcile()
        #expect(lab.kernel.capture().devices["snapstack-vol0-s"]?.readOnly == !writable)
    }
}
