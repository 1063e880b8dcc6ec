import BlockIO
import DeviceMapper
import SystemPackage

/// What the orchestrator asks of the host besides device-mapper: block-device facts, who holds
/// a device, its identity in udev, loop devices of snapstack's files, and the files themselves.
/// `LinuxHost` is the real one; a simulated kernel in memory is the other (see
/// `DeviceMapperControl`). Errors are the real implementation's own (`BlockIOError`), so
/// messages are the same through either.
public protocol HostDevices: Sendable {
    // MARK: Block devices
    func facts(of path: FilePath) throws -> BlockDeviceFacts
    /// The dm UUID of a device-mapper device, nil for other devices.
    func dmUUID(of number: DeviceNumber) -> String?
    /// The devices `number` is built on, recursively, itself and a partition's disk included.
    func underlyingDevices(of number: DeviceNumber) -> Set<DeviceNumber>
    /// Processes that hold `number` open, as `pid (command)`.
    func openers(of number: DeviceNumber) -> [String]
    /// Mounts, holders, swap and exclusive openers of the device at `path`.
    func usage(of path: FilePath) throws -> DeviceUsage
    /// What udev knows of the device: nil when udev cannot be asked or does not know it.
    func identity(of number: DeviceNumber, size: Bytes) -> DeviceIdentity?
    /// Every block device udev knows that has a node; for finding a disk again by identity.
    func blockDevices() -> [(node: String, number: DeviceNumber)]
    /// Asks udev to process `number` again (its rules read snapstack's member markers);
    /// false when there is no such device.
    @discardableResult
    func trigger(_ number: DeviceNumber) -> Bool
    /// Every name of `number` under /dev: its node, `/dev/block/MAJ:MIN` and udev's links.
    func names(of number: DeviceNumber) -> [String]
    /// Whether the device holds an LVM physical volume label (`LABELONE` in its first 4 sectors).
    func hasLVMLabel(_ number: DeviceNumber) -> Bool
    /// The first `count` bytes of the device (a filesystem's superblock), read past its page
    /// cache; nil when they cannot be read.
    func firstBytes(of number: DeviceNumber, count: Int) -> [UInt8]?
    /// Writes `bytes` over the 4 KiB of the device at `offset` (a multiple of 4 KiB; the rest
    /// zeroed), past the page cache and synchronously: the shutdown's record for the next boot.
    func overwrite(_ number: DeviceNumber, at offset: Bytes, with bytes: [UInt8]) throws
    /// Makes the initramfs of every installed kernel again (`update-initramfs -u -k all`, or
    /// `dracut -f --regenerate-all`: `InitramfsTool`), so that it carries what snapstack's hook
    /// or dracut module puts in it now; throws when it cannot.
    func updateInitramfs() throws
    /// The command `updateInitramfs()` runs, as a message tells a person to run it.
    var initramfsCommand: String { get }
    /// The host's runtime directory for snapstack (`/run/snapstack`).
    var runtimeDirectory: String { get }
    /// LVM's configuration directory (`/etc/lvm`, or `LVM_SYSTEM_DIR` as LVM itself reads it).
    var lvmSystemDirectory: String { get }
    /// Where LVM's commands take their volume-group locks (`V_<vg>`, flock).
    var lvmLockDirectory: String { get }

    // MARK: Loop devices
    func loops(backing file: String) throws -> [LoopDevice]
    func allLoops() throws -> [LoopDevice]
    func attachLoop(file: FilePath, directIO: Bool) throws -> LoopDevice
    func detachLoop(_ path: String) throws
    /// Makes the loop device take its file's new size.
    func refreshLoopCapacity(_ path: String) throws
    func loopUsesDirectIO(_ loop: LoopDevice) throws -> Bool

    // MARK: Files and their file systems
    func createFile(_ path: FilePath, size: Bytes, preallocate: Bool, zeroFill: Bytes) throws
    func growFile(_ path: FilePath, to size: Bytes, preallocate: Bool, zeroFill: Bytes) throws
    func isFullyWritten(_ path: FilePath) throws -> Bool
    /// The file system holding `directory`, nil when it cannot be told.
    func fileSystem(of directory: FilePath) -> FileSystemType?
    func writeCache(of number: DeviceNumber) -> WriteCache?
    func setWriteCache(_ mode: WriteCache, ofDeviceNamed name: String) throws
}

/// The kernel the orchestrator drives: device-mapper and the rest of the host.
public struct Kernel: Sendable {
    public var deviceMapper: any DeviceMapperControl
    public var host: any HostDevices
    public var volumes: any LogicalVolumes

    public init(deviceMapper: any DeviceMapperControl, host: any HostDevices, volumes: any LogicalVolumes) {
        self.deviceMapper = deviceMapper
        self.host = host
        self.volumes = volumes
    }

    /// This machine's kernel.
    public static var live: Kernel { Kernel(deviceMapper: DeviceMapperClient(), host: LinuxHost(), volumes: LVMTool()) }
}
