import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
import Snapstack
import Testing

/// A failing kernel call at each position of a verb: protect and a snapshot set roll back to
/// exactly what was there before; drop, merge and extend, which record their intent and are
/// finished rather than undone, leave nothing suspended and a state reconcile completes.
@Suite struct RollbackTests {
    /// What a rollback must restore: tables, suspension, loop devices, files and records. Era
    /// numbers and event counters may move (a checkpoint is harmless: changes since a snapshot
    /// become a superset).
    static func comparable(_ picture: SimulatedLab.Picture) -> SimulatedLab.Picture {
        var picture = picture
        for name in picture.devices.keys {
            picture.devices[name]!.era = 0
            picture.devices[name]!.eventNumber = 0
        }
        return picture
    }

    /// Runs `verb` with the n-th kernel change failing, for n = 1, 2, ... until the verb gets
    /// through every change; `check` judges each failure. Returns how many positions failed.
    static func failEachChange(setUp: (SimulatedLab) throws -> Void, _ verb: (Orchestrator) throws -> Void,
                               check: (SimulatedLab, SimulatedLab.Picture, String) throws -> Void) throws -> Int {
        for position in 1...500 {
            let lab = try SimulatedLab()
            try setUp(lab)
            let before = try lab.picture()
            lab.kernel.failChange(position)
            var thrown: (any Error)?
            do { try verb(try lab.orchestrator()) } catch { thrown = error }
            guard let fault = lab.kernel.firedFault else {
                #expect(thrown == nil, "no fault was injected, yet the verb failed: \(thrown.map { "\($0)" } ?? "")")
                return position - 1
            }
            guard thrown != nil else {
                // A failed resume is retried once (the guarantee of every suspend): the verb
                // then got through, and nothing is left to roll back.
                #expect(fault.hasPrefix("resume "), "the change \(fault) failed, yet the verb reported success")
                continue
            }
            try check(lab, before, fault)
        }
        Issue.record("the verb made more than 500 kernel changes")
        return 0
    }

    static func expectRolledBack(_ lab: SimulatedLab, _ before: SimulatedLab.Picture, _ fault: String) throws {
        let after = try lab.picture()
        #expect(comparable(after) == comparable(before), "after \(fault) failed:\nbefore \(before)\nafter  \(after)")
    }

    static func expectRepairable(_ lab: SimulatedLab, _ before: SimulatedLab.Picture, _ fault: String) throws {
        let suspended = lab.kernel.capture().devices.filter { $0.value.suspended }.keys
        #expect(suspended.isEmpty, "after \(fault) failed, \(suspended.sorted()) stayed suspended")
        _ = try lab.orchestrator().reconcile()
        for _ in 0..<3 where try lab.orchestrator().reconcile(dryRun: true).contains(where: { $0.action.contains("merge") }) {
            _ = try lab.orchestrator().reconcile()
        }
        let violations = try lab.violationsAfterReconcile()
        #expect(violations.isEmpty, "after \(fault) failed and reconcile: \(violations)")
        let left = try lab.tearDown()
        #expect(left.isEmpty, "after \(fault) failed, unprotect left \(left)")
    }

    static func snapshotOptions(size: Bytes = .mebibytes(1)) -> SnapshotOptions {
        var options = SnapshotOptions()
        options.name = "s"
        options.size = .bytes(size)
        return options
    }

    static func protectWithSnapshot(_ lab: SimulatedLab) throws {
        try lab.protect()
        _ = try lab.orchestrator().snapshot(["vol0"], options: snapshotOptions())
    }

    @Test func protectRollsBackAtEveryChange() throws {
        let positions = try Self.failEachChange(setUp: { _ in }, {
            try $0.protect(devicePath: SimulatedLab.disks[0], name: "vol0", options: ProtectOptions(cbtBlock: .mebibytes(1)))
        }, check: Self.expectRolledBack)
        // Metadata file, its loop device, -real created and resumed, top created and resumed.
        #expect(positions >= 6)
    }

    @Test func aSnapshotSetRollsBackAtEveryChange() throws {
        let positions = try Self.failEachChange(setUp: { try $0.protect(3) }, {
            _ = try $0.snapshot(["vol0", "vol1", "vol2"], options: Self.snapshotOptions())
        }, check: Self.expectRolledBack)
        // Per device: store file, loop, snapshot device, origin load, checkpoint, suspend, resumes.
        #expect(positions >= 3 * 7)
    }

    @Test func aSecondSnapshotRollsBackAtEveryChange() throws {
        let positions = try Self.failEachChange(setUp: Self.protectWithSnapshot, {
            var options = Self.snapshotOptions()
            options.name = "t"
            _ = try $0.snapshot(["vol0"], options: options)
        }, check: Self.expectRolledBack)
        #expect(positions >= 5)
    }

    @Test func dropFailingAtEveryChangeIsFinishedByReconcile() throws {
        let positions = try Self.failEachChange(setUp: Self.protectWithSnapshot, { try $0.drop(snapshot: "vol0-s") },
                                                check: Self.expectRepairable)
        #expect(positions >= 3)
    }

    @Test func mergeFailingAtEveryChangeIsFinishedByReconcile() throws {
        let positions = try Self.failEachChange(setUp: Self.protectWithSnapshot, { _ = try $0.merge(snapshot: "vol0-s") },
                                                check: Self.expectRepairable)
        #expect(positions >= 3)
    }

    @Test func extendFailingAtEveryChangeIsFinishedByReconcile() throws {
        let positions = try Self.failEachChange(setUp: Self.protectWithSnapshot, {
            _ = try $0.extend(snapshot: "vol0-s", .by(.mebibytes(1)))
        }, check: Self.expectRepairable)
        #expect(positions >= 2)
    }

    @Test func unprotectFailingAtEveryChangeIsFinishedByReconcile() throws {
        let positions = try Self.failEachChange(setUp: { try $0.protect() }, { try $0.unprotect(name: "vol0") },
                                                check: Self.expectRepairable)
        #expect(positions >= 3)
    }
}
