#if canImport(Glibc)
import Glibc
#endif

/// Named steps at which `SNAPSTACK_FAILPOINT=<name>` kills the process with SIGKILL, to prove
/// that `snapstack reconcile` repairs whatever a crash there leaves behind. `snapstack
/// failpoints` lists them; the VM suite loops over that list.
public enum Failpoint: String, CaseIterable, Sendable {
    case protectRecorded = "protect.recorded"
    case protectMetadataAttached = "protect.metadata-attached"
    case protectRealCreated = "protect.real-created"
    case protectTopCreated = "protect.top-created"

    case snapshotRecorded = "snapshot.recorded"
    case snapshotStoreAttached = "snapshot.store-attached"
    case snapshotPreloaded = "snapshot.preloaded"
    case snapshotActivated = "snapshot.activated"
    case snapshotCheckpointed = "snapshot.checkpointed"
    case snapshotSuspended = "snapshot.suspended"
    case snapshotResumed = "snapshot.resumed"

    case dropRecorded = "drop.recorded"
    case dropSnapshotRemoved = "drop.snapshot-removed"
    case dropOriginReloaded = "drop.origin-reloaded"

    case mergeRecorded = "merge.recorded"
    case mergeSnapshotRemoved = "merge.snapshot-removed"
    case mergeStarted = "merge.started"
    case mergeFinished = "merge.finished"

    case unprotectRecorded = "unprotect.recorded"
    case unprotectTopRemoved = "unprotect.top-removed"
    case unprotectRealRemoved = "unprotect.real-removed"

    case extendRecorded = "extend.recorded"
    case extendFileGrown = "extend.file-grown"
    case extendCapacityRefreshed = "extend.capacity-refreshed"

    public static let environmentVariable = "SNAPSTACK_FAILPOINT"

    /// What state a crash here leaves.
    public var summary: String {
        switch self {
        case .protectRecorded: "intent recorded, nothing built"
        case .protectMetadataAttached: "era metadata file attached to a loop device"
        case .protectRealCreated: "hidden -real layer created, no top device"
        case .protectTopCreated: "stack complete, not yet marked protected"
        case .snapshotRecorded: "snapshot set recorded, nothing built"
        case .snapshotStoreAttached: "COW stores created and attached"
        case .snapshotPreloaded: "snapshot devices and origin tables loaded but inactive"
        case .snapshotActivated: "snapshots live, origins not yet switched to snapshot-origin"
        case .snapshotCheckpointed: "new eras begun, origins not yet switched"
        case .snapshotSuspended: "every top device suspended (filesystems frozen)"
        case .snapshotResumed: "snapshots live, not yet marked active"
        case .dropRecorded: "drop recorded, nothing removed"
        case .dropSnapshotRemoved: "snapshot device removed, origin still snapshot-origin"
        case .dropOriginReloaded: "origin back to linear, store still attached"
        case .mergeRecorded: "merge recorded, nothing changed"
        case .mergeSnapshotRemoved: "snapshot device removed, merge not loaded"
        case .mergeStarted: "snapshot-merge running on the origin"
        case .mergeFinished: "merge complete, origin still snapshot-merge"
        case .unprotectRecorded: "unprotect recorded, stack intact"
        case .unprotectTopRemoved: "top device removed, -real layer left"
        case .unprotectRealRemoved: "stack removed, metadata still attached"
        case .extendRecorded: "store growth recorded, store unchanged"
        case .extendFileGrown: "store file grown, its loop device still at the old size"
        case .extendCapacityRefreshed: "kernel uses the larger store, new size not yet recorded"
        }
    }

    /// Kills the process here when `SNAPSTACK_FAILPOINT` names this step.
    public func hit() {
        guard let value = getenv(Self.environmentVariable), String(cString: value) == rawValue else { return }
        kill(getpid(), SIGKILL)
    }
}
