import BlockIO
import CDeviceMapper
import CShims
import Synchronization
import SystemPackage

/// A device as `DM_DEVICE_INFO` reports it.
public struct DeviceInfo: Hashable, Sendable {
    public var name: String
    /// The UUID the device was created with, nil when it has none.
    public var uuid: String?
    public var number: DeviceNumber
    public var suspended: Bool
    public var hasLiveTable: Bool
    public var hasInactiveTable: Bool
    /// How many openers the device has (mounted filesystems, holders, open descriptors).
    public var openCount: Int
    public var eventNumber: UInt32
    public var readOnly: Bool
    public var targetCount: Int

    public init(name: String, uuid: String?, number: DeviceNumber, suspended: Bool, hasLiveTable: Bool,
                hasInactiveTable: Bool, openCount: Int, eventNumber: UInt32, readOnly: Bool, targetCount: Int) {
        self.name = name
        self.uuid = uuid
        self.number = number
        self.suspended = suspended
        self.hasLiveTable = hasLiveTable
        self.hasInactiveTable = hasInactiveTable
        self.openCount = openCount
        self.eventNumber = eventNumber
        self.readOnly = readOnly
        self.targetCount = targetCount
    }
}

/// One entry of `DM_DEVICE_LIST`.
public struct ListedDevice: Hashable, Sendable {
    /// The kernel's name as is: a device made by another tool may use characters `DMName` refuses.
    public var name: String
    public var number: DeviceNumber

    public init(name: String, number: DeviceNumber) {
        self.name = name
        self.number = number
    }
}

/// A loaded target type and its version (`DM_DEVICE_LIST_VERSIONS`).
public struct TargetVersion: Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var major: UInt32, minor: UInt32, patch: UInt32
    public var description: String { "\(major).\(minor).\(patch)" }
}

/// One raw line of `DM_DEVICE_TABLE` or `DM_DEVICE_STATUS`, as the kernel gave it.
public struct RawTargetLine: Hashable, Sendable {
    public var start: Sectors
    public var length: Sectors
    public var type: String
    public var text: String

    public init(start: Sectors, length: Sectors, type: String, text: String) {
        self.start = start
        self.length = length
        self.type = type
        self.text = text
    }
}

/// How to suspend (`dmsetup suspend` options).
public struct SuspendOptions: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Skip freezing the filesystem above: required when the caller froze it already
    /// (`fsfreeze -f`), since a suspend that tries to freeze it again fails with EBUSY.
    public static let noLockFS = SuspendOptions(rawValue: 1 << 0)
    /// Do not flush queued I/O; what is in flight is requeued for after the resume.
    public static let noFlush = SuspendOptions(rawValue: 1 << 1)
}

/// libdm's udev flags (`DM_UDEV_*_FLAG`): they travel with the uevent and steer the udev rules
/// that run for a device-mapper node.
public struct UdevFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let disableDMRules = UdevFlags(rawValue: UInt16(DM_UDEV_DISABLE_DM_RULES_FLAG))
    public static let disableSubsystemRules = UdevFlags(rawValue: UInt16(DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG))
    public static let disableDiskRules = UdevFlags(rawValue: UInt16(DM_UDEV_DISABLE_DISK_RULES_FLAG))
    public static let disableOtherRules = UdevFlags(rawValue: UInt16(DM_UDEV_DISABLE_OTHER_RULES_FLAG))
    public static let lowPriority = UdevFlags(rawValue: UInt16(DM_UDEV_LOW_PRIORITY_FLAG))

    /// An internal layer (`-real`): its node exists, but no blkid probe, no `/dev/disk/by-*`
    /// links and no other rules run for it, so it never competes with the top device for a
    /// filesystem's by-uuid link (what lvm2 does for its `-real` and `-cow` layers).
    public static let hiddenLayer: UdevFlags = [.disableSubsystemRules, .disableDiskRules, .disableOtherRules]
}

/// Node changes whose udev processing is awaited together, once, when the transaction ends:
/// so that a caller can resume several devices inside a freeze window and wait for udev after
/// it (libdm shares one cookie between tasks, as lvm2's deptree does).
public final class UdevTransaction {
    var cookie: UInt32 = 0
    /// Public so that another implementation of `DeviceMapperControl` (a simulated kernel) can
    /// hand its callers one; only `DeviceMapperClient` gives it a cookie.
    public init() {}
}

/// Messages understood by `era` targets (era.rst).
public enum EraMessage: String, Sendable, CaseIterable {
    /// Starts a new era: writes from now on are recorded under the next era number.
    case checkpoint
    /// Takes a metadata snapshot that `era_invalidate --metadata-snapshot` and snapstack read.
    /// The kernel also begins a new era when it takes it.
    case takeMetadataSnapshot = "take_metadata_snap"
    case dropMetadataSnapshot = "drop_metadata_snap"
}

extension DeviceNumber {
    /// Decodes the kernel's `huge_encode_dev` form used by the dm ioctl interface.
    init(kernelEncoded dev: UInt64) {
        self.init(major: UInt32((dev & 0xfff00) >> 8),
                  minor: UInt32((dev & 0xff) | ((dev >> 12) & 0xfff00)))
    }
}
