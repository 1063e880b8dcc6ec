import BlockIO
import Foundation
import KernelSimulator
import Snapstack
import Testing

/// The VM suite's failpoint loop on a simulated kernel: a crash at every failpoint, then
/// reconcile, then the state checked against the database and torn down to nothing.
@Suite struct CrashTests {
    /// Sets up what `point`'s verb needs and returns the verb.
    static func setUp(_ point: Failpoint, in lab: SimulatedLab, setSize: Int = 1, store: String? = nil) throws -> (Orchestrator) throws -> Void {
        let names = (0..<setSize).map { "vol\($0)" }
        switch point.rawValue.prefix(while: { $0 != "." }) {
        case "protect":
            var options = ProtectOptions()
            options.cbtMetadataGroup = lab.metadataGroup
            return { try $0.protect(devicePath: SimulatedLab.disks[0], name: "vol0", options: options) }
        case "unprotect":
            try lab.protect()
            return { try $0.unprotect(name: "vol0") }
        case "snapshot":
            try lab.protect(setSize)
            var options = SnapshotOptions()
            options.name = "s"
            options.store = store
            return { _ = try $0.snapshot(names, options: options) }
        case "drop", "merge", "extend":
            try lab.protect()
            var options = SnapshotOptions()
            options.name = "s"
            options.size = .bytes(.mebibytes(1))
            options.store = store
            _ = try lab.orchestrator().snapshot(["vol0"], options: options)
            switch point.rawValue.prefix(while: { $0 != "." }) {
            case "drop": return { try $0.drop(snapshot: "vol0-s") }
            case "merge": return { _ = try $0.merge(snapshot: "vol0-s") }
            default: return { _ = try $0.extend(snapshot: "vol0-s", .by(.mebibytes(1))) }
            }
        default:
            throw SimulatedCrash(point: point)
        }
    }

    static func crashAndRepair(_ point: Failpoint, setSize: Int = 1, volumeStores: Bool = false, metadataVolumes: Bool = false) throws {
        let lab = try SimulatedLab()
        if volumeStores || metadataVolumes { lab.makeStoreGroup() }
        if metadataVolumes { lab.metadataGroup = SimulatedLab.storeGroup }
        let verb = try setUp(point, in: lab, setSize: setSize, store: volumeStores ? SimulatedLab.storeGroup : nil)
        let reached = try lab.crash(at: point, verb)
        #expect(reached, "the verb never reached \(point.rawValue)")
        let actions = try lab.orchestrator().reconcile()
        #expect(!actions.isEmpty, "reconcile found nothing to repair after a crash at \(point.rawValue)")
        // reconcile starts an interrupted merge without waiting for it (the daemon's next pass,
        // or the next reconcile, finishes it); the simulated kernel completes it at once.
        for _ in 0..<3 where try lab.orchestrator().reconcile(dryRun: true).contains(where: { $0.action.contains("merge") }) {
            _ = try lab.orchestrator().reconcile()
        }
        let violations = try lab.violationsAfterReconcile()
        #expect(violations.isEmpty, "after a crash at \(point.rawValue) and reconcile: \(violations)")
        let left = try lab.tearDown()
        #expect(left.isEmpty, "after a crash at \(point.rawValue), unprotect left \(left)")
    }

    @Test(arguments: Failpoint.allCases)
    func crashIsRepairedByReconcile(_ point: Failpoint) throws {
        try Self.crashAndRepair(point)
    }

    @Test(arguments: Failpoint.allCases.filter { $0.rawValue.hasPrefix("snapshot.") })
    func crashInAThreeDeviceSetIsRepaired(_ point: Failpoint) throws {
        try Self.crashAndRepair(point, setSize: 3)
    }

    /// Stores on logical volumes (`--store VG`): a crash while one is made, grown or removed
    /// leaves no volume that no snapshot records, and none missing.
    @Test(arguments: Failpoint.allCases.filter { ["snapshot", "drop", "merge", "extend"].contains($0.rawValue.prefix(while: { $0 != "." })) })
    func crashWithVolumeStoresIsRepaired(_ point: Failpoint) throws {
        try Self.crashAndRepair(point, setSize: point.rawValue.hasPrefix("snapshot.") ? 3 : 1, volumeStores: true)
    }

    /// Era metadata on a logical volume (`protect --cbt-metadata VG`), at every failpoint.
    @Test(arguments: Failpoint.allCases)
    func crashWithMetadataVolumesIsRepaired(_ point: Failpoint) throws {
        try Self.crashAndRepair(point, metadataVolumes: true)
    }
}
