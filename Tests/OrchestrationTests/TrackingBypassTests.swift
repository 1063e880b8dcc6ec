import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
@testable import Snapstack
import SnapstackErrors
import StateDatabase
import Testing

/// Era metadata that can no longer be written: dm-era then fails the origin's writes to blocks
/// it has not marked and fails its own resume. The era layer is bypassed (linear over the same
/// origin, the tracking interrupted), never left suspended, and put back by reconcile once the
/// metadata works again. Over the simulated kernel, whose era target behaves so when its
/// metadata device is in `failingWrites`.
@Suite struct TrackingBypassTests {
    static func lab() throws -> SimulatedLab {
        let lab = try SimulatedLab()
        try lab.protect(1)
        return lab
    }

    /// The metadata device of vol0's era layer, and the origin it maps.
    static func eraDevices(_ lab: SimulatedLab) throws -> (metadata: DeviceNumber, origin: DeviceReference) {
        guard case .era(let era)? = lab.kernel.capture().devices["snapstack-vol0-real"]?.live?.lines.first?.target,
              case .number(let metadata) = era.metadata else {
            throw SnapstackError(.failed, "snapstack-vol0-real is not an era over a device number")
        }
        return (metadata, era.origin)
    }

    /// Makes the metadata device fail writes, or work again (`metadata`: when the era layer is
    /// bypassed and cannot tell).
    static func failMetadata(_ lab: SimulatedLab, _ fail: Bool, metadata: DeviceNumber? = nil) throws {
        let metadata = try metadata ?? eraDevices(lab).metadata
        var state = lab.kernel.capture()
        if fail { state.failingWrites.insert(metadata) } else { state.failingWrites.remove(metadata) }
        lab.kernel.restore(state)
    }

    static func realTarget(_ lab: SimulatedLab) -> Target? {
        lab.kernel.capture().devices["snapstack-vol0-real"]?.live?.lines.first?.target
    }

    @Test("the daemon's look bypasses a failed era: linear over the same origin, not suspended, tracking interrupted with the reason; an incremental is refused")
    func bypassFailedEra() throws {
        let lab = try Self.lab()
        let origin = try Self.eraDevices(lab).origin
        let base = ContinuityTests.export(of: try lab.orchestrator().device(named: "vol0"), era: ContinuityTests.era(lab))
        #expect(try lab.orchestrator().devicesWithFailedTracking().isEmpty)
        #expect(try lab.orchestrator().bypassFailedTracking().isEmpty, "a working era is left alone")

        try Self.failMetadata(lab, true)
        #expect(try lab.orchestrator().devicesWithFailedTracking() == ["vol0"])
        let bypassed = try lab.orchestrator().bypassFailedTracking()
        #expect(bypassed.map(\.name) == ["vol0"])
        #expect(Self.realTarget(lab) == .linear(Linear(device: origin)))
        #expect(lab.kernel.capture().devices.values.allSatisfy { !$0.suspended })
        let device = try lab.orchestrator().device(named: "vol0")
        #expect(device.trackingInterruptedAt != nil && device.trackingInterruptedEra == nil)
        #expect(device.trackingInterruptedReason?.contains("metadata could not be written") == true)
        let refused = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().checkTrackingContinuous(device, since: base)
        }
        #expect(refused.kind == .trackingInterrupted)
        #expect(try lab.orchestrator().metricsInput().trackingInterruptions == 1)
        // Idempotent: a second look changes nothing.
        let before = lab.kernel.capture().log.count
        #expect(try lab.orchestrator().bypassFailedTracking().isEmpty)
        #expect(lab.kernel.capture().log.count == before)
    }

    @Test("a snapshot of a device whose era failed bypasses it and is taken, with no checkpoint")
    func snapshotBypasses() throws {
        let lab = try Self.lab()
        try Self.failMetadata(lab, true)
        try ReconcilePlanTests.snapshot(lab, ["vol0"], as: "s")
        #expect(try lab.orchestrator().snapshotSummaries().map(\.state) == [.active])
        if case .linear? = Self.realTarget(lab) {} else { Issue.record("the era layer is still live: \(String(describing: Self.realTarget(lab)))") }
        #expect(!lab.kernel.capture().log.contains { $0.hasPrefix("message snapstack-vol0-real") })
        #expect(lab.kernel.capture().devices.values.allSatisfy { !$0.suspended })
    }

    @Test("reconcile resumes an era layer whose failed resume left it suspended by bypassing it")
    func suspendedEraBypassed() throws {
        let lab = try Self.lab()
        try Self.failMetadata(lab, true)
        // A resume of the era layer (as a reload would make) fails and leaves it suspended.
        #expect(throws: DeviceMapperError.self) {
            try lab.kernel.withSuspended([try DMName("snapstack-vol0-real")], options: [], transaction: nil) {}
        }
        #expect(lab.kernel.capture().devices["snapstack-vol0-real"]?.suspended == true)
        let actions = try lab.orchestrator().reconcile()
        #expect(actions.map(\.step).contains("resume-suspended"))
        #expect(lab.kernel.capture().devices.values.allSatisfy { !$0.suspended })
        if case .linear? = Self.realTarget(lab) {} else { Issue.record("not bypassed: \(String(describing: Self.realTarget(lab)))") }
        #expect(try lab.orchestrator().device(named: "vol0").trackingInterruptedReason?.contains("metadata") == true)
    }

    @Test("an adopted volume grown by LVM while its era metadata fails: the re-adoption's resume fails, and the era layer is bypassed rather than left suspended")
    func readoptionBypasses() throws {
        let lab = try AdoptionTests().lab()
        try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data", options: ProtectOptions(cbtBlock: .mebibytes(1)))
        guard case .era(let era)? = lab.kernel.capture().devices["snapstack-data-real"]?.live?.lines.first?.target,
              case .number(let metadata) = era.metadata else { Issue.record("no era layer"); return }
        var state = lab.kernel.capture()
        state.failingWrites.insert(metadata)
        lab.kernel.restore(state)
        // As lvextend does: a plain table, one segment longer, loaded and resumed.
        let grown = AdoptionTests.lvmTable + "\n65536 16384 linear 8:16 2048"
        try lab.kernel.load(try DMName(AdoptionTests.volume), table: try Table(parsing: grown), readOnly: false)
        try lab.kernel.withSuspended([try DMName(AdoptionTests.volume)], options: [], transaction: nil) {}

        #expect(throws: SnapstackError.self) { try lab.orchestrator().reconcile() }
        let devices = lab.kernel.capture().devices
        #expect(devices.values.allSatisfy { !$0.suspended }, "\(devices.filter(\.value.suspended).keys)")
        guard case .linear(let linear)? = devices["snapstack-data-real"]?.live?.lines.first?.target else {
            Issue.record("-real: \(String(describing: devices["snapstack-data-real"]?.live))"); return
        }
        #expect(linear.device == era.origin, "linear over the clone")
        #expect(devices[AdoptionTests.volume]?.live?.description == grown, "the volume keeps LVM's table: its writes reach the disk")
        #expect(try lab.orchestrator().deviceSummary(named: "data").tracking == .interrupted)
    }

    @Test("a bypassed era over a reboot: the rebuilt stack tracks again, and its era is recorded by the same reconcile")
    func bypassOverReboot() throws {
        let lab = try SimulatedLab()
        lab.kernel.writeHead("/dev/sda", ContinuityTests.ext4Head())
        try lab.protect(1)
        let metadata = try Self.eraDevices(lab).metadata
        try Self.failMetadata(lab, true)
        _ = try lab.orchestrator().bypassFailedTracking()
        #expect(try lab.orchestrator().recordCleanStop() == ["vol0"])
        lab.kernel.reboot()
        try Self.failMetadata(lab, false, metadata: metadata)
        #expect(try lab.orchestrator().reconcile().map(\.step) == ["rebuild-stack"])
        if case .era? = Self.realTarget(lab) {} else { Issue.record("not rebuilt with its era: \(String(describing: Self.realTarget(lab)))") }
        let device = try lab.orchestrator().device(named: "vol0")
        #expect(device.trackingInterruptedEra == ContinuityTests.era(lab), "incrementals from now on are not refused for want of an era")
        try lab.orchestrator().checkTrackingContinuous(device, since: ContinuityTests.export(of: device, era: ContinuityTests.era(lab)))
    }

    @Test("reconcile puts the era back once the metadata works, and records the era from which tracking is complete; while it still fails, the era is swapped out again and reconcile says why")
    func restoreTracking() throws {
        let lab = try Self.lab()
        let metadata = try Self.eraDevices(lab).metadata
        try Self.failMetadata(lab, true)
        _ = try lab.orchestrator().bypassFailedTracking()

        // The daemon leaves a bypassed era alone.
        #expect(try lab.orchestrator().reconcile(dryRun: true, restoreTracking: false).isEmpty)
        // Still failing: the attempt ends linear again, not suspended, with an error.
        #expect(try lab.orchestrator().reconcile(dryRun: true).map(\.step) == ["restore-tracking"])
        let failed = try #require(throws: SnapstackError.self) { try lab.orchestrator().reconcile() }
        #expect("\(failed)".contains("cannot track the changes of vol0 again"), "\(failed)")
        if case .linear? = Self.realTarget(lab) {} else { Issue.record("left as \(String(describing: Self.realTarget(lab)))") }
        #expect(lab.kernel.capture().devices.values.allSatisfy { !$0.suspended })

        try Self.failMetadata(lab, false, metadata: metadata)
        let actions = try lab.orchestrator().reconcile()
        #expect(actions.map(\.step) == ["restore-tracking"])
        if case .era? = Self.realTarget(lab) {} else { Issue.record("not restored: \(String(describing: Self.realTarget(lab)))") }
        let device = try lab.orchestrator().device(named: "vol0")
        #expect(device.trackingInterruptedEra == ContinuityTests.era(lab), "the era from which changes are complete")
        // An export from the restored era on builds on exact tracking; none from before does.
        try lab.orchestrator().checkTrackingContinuous(device, since: ContinuityTests.export(of: device, era: ContinuityTests.era(lab)))
        #expect(throws: SnapstackError.self) {
            try lab.orchestrator().checkTrackingContinuous(device, since: ContinuityTests.export(of: device, era: 1))
        }
        #expect(try lab.orchestrator().reconcile().isEmpty, "a second reconcile changes nothing")
    }
}
