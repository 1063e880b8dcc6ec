import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A loop device bound to a backing file, as `losetup -a` lists it.
public struct LoopDevice: Hashable, Sendable, CustomStringConvertible {
    /// `/dev/loopN`.
    public var path: String
    public var number: DeviceNumber
    /// The backing file as the kernel names it in `/sys/block/loopN/loop/backing_file`: the
    /// file's absolute path with symbolic links resolved, and " (deleted)" appended by the
    /// kernel once the file has been unlinked. Nil when the device is not bound.
    public var backingFile: String?

    public init(path: String, number: DeviceNumber, backingFile: String?) {
        self.path = path
        self.number = number
        self.backingFile = backingFile
    }

    public var description: String { "\(path) (\(number)) on \(backingFile ?? "nothing")" }
}

/// Loop devices: binding regular files as block devices through /dev/loop-control and the
/// loop ioctls, and listing them from sysfs.
public enum Loop {
    /// The loop driver's block major (`LOOP_MAJOR`); devices made on demand keep it.
    public static let major: UInt32 = 7

    /// How `detach` left the device.
    public enum DetachOutcome: Hashable, Sendable {
        /// The kernel unbound the device before `LOOP_CLR_FD` returned.
        case detached
        /// Someone else still had the device open, so the kernel only set autoclear: it
        /// unbinds the device when the last opener closes it (old kernels failed with EBUSY).
        case deferredUntilClosed
        /// The device was not bound (ENXIO); nothing was done.
        case wasNotAttached
    }

    /// How many times `attach` asks `LOOP_CTL_GET_FREE` again after another process bound the
    /// device it was given first.
    static let attachAttempts = 8

    /// Binds `file` to a free loop device and returns it.
    ///
    /// Opens the file (`O_RDWR`, or `O_RDONLY` when `readOnly`), asks `/dev/loop-control` for a
    /// free index (`LOOP_CTL_GET_FREE`), opens `/dev/loopN` and binds it with `LOOP_CONFIGURE`
    /// (kernel 5.8 and later): `lo_flags` carries `LO_FLAGS_READ_ONLY`, `LO_FLAGS_AUTOCLEAR`
    /// and `LO_FLAGS_DIRECT_IO` as asked and `lo_file_name` the file's absolute path (the
    /// kernel keeps 63 bytes of it; sysfs and `losetup` show the full path from the open file).
    /// When another process binds the same index first (EBUSY), it asks for another index.
    /// On kernels without `LOOP_CONFIGURE` (EINVAL or ENOTTY) it binds with `LOOP_SET_FD`,
    /// `LOOP_SET_STATUS64` and `LOOP_SET_DIRECT_IO`, and unbinds again if a later step fails.
    ///
    /// `directIO` is a request: the kernel keeps buffered I/O when the backing file system
    /// cannot do O_DIRECT at the device's block size (`/sys/block/loopN/loop/dio` says which).
    ///
    /// With `autoclear`, the kernel unbinds the device when its last opener closes it. This
    /// function closes its own descriptor before returning, so unless something else opened
    /// the device meanwhile (udev's probe does, for a moment), the device is unbound again at
    /// once: use `attachAndOpen` and close the descriptor only after mounting the device or
    /// building a device-mapper table on it.
    @discardableResult
    public static func attach(file: FilePath, readOnly: Bool = false, autoclear: Bool = false,
                              directIO: Bool = false) throws(BlockIOError) -> LoopDevice {
        let (device, descriptor) = try attachAndOpen(file: file, readOnly: readOnly, autoclear: autoclear,
                                                     directIO: directIO)
        // The binding outlives the descriptor it was made through, except with autoclear (above).
        _ = closeDescriptor(descriptor)
        return device
    }

    /// `attach`, returning the loop device still open (read-write, or read-only when
    /// `readOnly`). The caller closes the descriptor; with `autoclear` that close (if it is the
    /// last opener) unbinds the device.
    public static func attachAndOpen(file: FilePath, readOnly: Bool = false, autoclear: Bool = false,
                                     directIO: Bool = false) throws(BlockIOError) -> (device: LoopDevice, descriptor: FileDescriptor) {
        let filePath = file.string
        let backing: FileDescriptor
        switch openDescriptor(filePath, readOnly ? O_RDONLY : O_RDWR) {
        case .success(let opened): backing = opened
        case .failure(let error): throw BlockIOError(filePath, "open", error)
        }
        // The loop driver takes its own reference to the open file; ours can go once bound.
        defer { _ = closeDescriptor(backing) }
        let name = try backingName(backing, given: file)

        let control: FileDescriptor
        switch openDescriptor("/dev/loop-control", O_RDWR) {
        case .success(let opened): control = opened
        case .failure(let error): throw BlockIOError("/dev/loop-control", "open", error)
        }
        defer { _ = closeDescriptor(control) }

        var flags: UInt32 = 0
        if readOnly { flags |= snapstack_LO_FLAGS_READ_ONLY }
        if autoclear { flags |= snapstack_LO_FLAGS_AUTOCLEAR }
        if directIO { flags |= snapstack_LO_FLAGS_DIRECT_IO }

        for _ in 0..<attachAttempts {
            let index: Int32
            switch retryingInterrupts({ snapstack_loop_ctl_get_free(control.rawValue) }) {
            case .success(let free): index = free
            case .failure(let error): throw BlockIOError("/dev/loop-control", "LOOP_CTL_GET_FREE", error)
            }
            let path = "/dev/loop\(index)"
            // A loop device opened read-only is bound read-only whatever lo_flags says, so the
            // node is opened for writing unless the binding is meant to be read-only.
            let device: FileDescriptor
            switch openDescriptor(path, readOnly ? O_RDONLY : O_RDWR) {
            case .success(let opened): device = opened
            // Another process removed the free device (LOOP_CTL_REMOVE) before we opened it.
            case .failure(.noSuchAddressOrDevice): continue
            case .failure(let error): throw BlockIOError(path, "open", error)
            }
            let bound: Bool
            do throws(BlockIOError) {
                bound = try bind(device, at: path, to: backing, flags: flags, name: name)
            } catch {
                _ = closeDescriptor(device)
                throw error
            }
            guard bound else {
                _ = closeDescriptor(device)
                continue
            }
            switch statDescriptor(device) {
            case .success(let status):
                return (LoopDevice(path: path, number: DeviceNumber(status.st_rdev), backingFile: name), device)
            case .failure(let error):
                // fstat of an open descriptor does not fail in practice; if it does, the caller
                // must still learn that the device is bound.
                _ = closeDescriptor(device)
                throw BlockIOError(path: path, reason: .system(operation: "fstat", error),
                                leftOver: "\(path) is bound to \(name)")
            }
        }
        throw BlockIOError(path: "/dev/loop-control", reason: .noFreeLoopDevice(attempts: attachAttempts))
    }

    /// Binds the open loop device to `backing`. Returns false when another process bound the
    /// device first (EBUSY), so that the caller asks for another index.
    private static func bind(_ device: FileDescriptor, at path: String, to backing: FileDescriptor,
                             flags: UInt32, name: String) throws(BlockIOError) -> Bool {
        let configured = retryingInterrupts {
            snapstack_loop_configure(device.rawValue, backing.rawValue, flags, name)
        }
        switch configured {
        case .success: return true
        case .failure(.resourceBusy): return false
        // Kernels before 5.8 do not know the ioctl: the loop driver answers EINVAL, the block
        // layer ENOTTY. A backing file the kernel cannot use fails LOOP_SET_FD below the same way.
        case .failure(.invalidArgument), .failure(.inappropriateIOCTLForDevice): break
        case .failure(let error): throw BlockIOError(path, "LOOP_CONFIGURE", error)
        }

        switch retryingInterrupts({ snapstack_loop_set_fd(device.rawValue, backing.rawValue) }) {
        case .success: break
        case .failure(.resourceBusy): return false
        case .failure(let error): throw BlockIOError(path, "LOOP_SET_FD", error)
        }
        // LOOP_SET_FD took read-only from the descriptors' modes; autoclear is set by status.
        let statusFlags = flags & snapstack_LO_FLAGS_AUTOCLEAR
        var failure: BlockIOError?
        if case .failure(let error) = retryingInterrupts({
            snapstack_loop_set_status64(device.rawValue, statusFlags, name)
        }) {
            failure = BlockIOError(path, "LOOP_SET_STATUS64", error)
        } else if flags & snapstack_LO_FLAGS_DIRECT_IO != 0 {
            switch retryingInterrupts({ snapstack_loop_set_direct_io(device.rawValue, 1) }) {
            // EINVAL: the backing file system cannot do direct I/O here; LOOP_CONFIGURE keeps
            // buffered I/O silently in that case, and so does this path.
            case .success, .failure(.invalidArgument): break
            case .failure(let error): failure = BlockIOError(path, "LOOP_SET_DIRECT_IO", error)
            }
        }
        guard var failure else { return true }
        if case .failure(let error) = retryingInterrupts({ snapstack_loop_clr_fd(device.rawValue) }) {
            failure.leftOver = "LOOP_CLR_FD of \(path) failed: \(error)"
        }
        throw failure
    }

    /// The name the kernel will show for the backing file: the target of /proc/self/fd/N is the
    /// same d_path() text that sysfs's backing_file prints. Without /proc, the given path made
    /// absolute.
    private static func backingName(_ backing: FileDescriptor, given file: FilePath) throws(BlockIOError) -> String {
        if case .success(let name) = readSymbolicLink("/proc/self/fd/\(backing.rawValue)"), name.hasPrefix("/") {
            return name
        }
        if file.isAbsolute { return file.lexicallyNormalized().string }
        guard let cwd = getcwd(nil, 0) else { throw BlockIOError(file.string, "getcwd", Errno(rawValue: Glibc.errno)) }
        defer { free(cwd) }
        return FilePath(String(cString: cwd)).pushing(file).lexicallyNormalized().string
    }

    /// Unbinds the loop device at `path` with `LOOP_CLR_FD`.
    ///
    /// Idempotent: a device that is not bound (ENXIO) is left alone and reported as
    /// `wasNotAttached`. When someone else still has the device open, current kernels do not
    /// refuse: they set autoclear and unbind when the last opener closes it
    /// (`deferredUntilClosed`); this function's own descriptor does not count as such an opener.
    /// udev probes every newly bound device (blkid) and holds it open meanwhile, so a detach
    /// straight after `attach` is often deferred for a moment; after `udevadm settle` it is
    /// immediate. Kernels that answer EBUSY instead make this throw.
    @discardableResult
    public static func detach(_ path: String) throws(BlockIOError) -> DetachOutcome {
        let device: FileDescriptor
        switch openDescriptor(path, O_RDONLY) {
        case .success(let opened): device = opened
        // The loop device is being deleted (LOOP_CTL_REMOVE): nothing is bound to it.
        case .failure(.noSuchAddressOrDevice): return .wasNotAttached
        case .failure(let error): throw BlockIOError(path, "open", error)
        }
        defer { _ = closeDescriptor(device) }
        try requireLoopDevice(device, path)

        switch retryingInterrupts({ snapstack_loop_clr_fd(device.rawValue) }) {
        case .success: break
        case .failure(.noSuchAddressOrDevice): return .wasNotAttached
        case .failure(let error): throw BlockIOError(path, "LOOP_CLR_FD", error)
        }
        // An immediate detach leaves the device unbound before the ioctl returns; a deferred
        // one leaves it bound with autoclear set.
        var flags: UInt32 = 0
        switch retryingInterrupts({ snapstack_loop_get_flags(device.rawValue, &flags) }) {
        case .success: return .deferredUntilClosed
        case .failure(.noSuchAddressOrDevice): return .detached
        case .failure(let error): throw BlockIOError(path, "LOOP_GET_STATUS64", error)
        }
    }

    /// Makes the loop device at `path` take the backing file's current size (`LOOP_SET_CAPACITY`),
    /// after the file was grown (see `FileAllocation.grow`). Fails with ENXIO when the device is
    /// not bound.
    public static func refreshCapacity(_ path: String) throws(BlockIOError) {
        let device: FileDescriptor
        switch openDescriptor(path, O_RDONLY) {
        case .success(let opened): device = opened
        case .failure(let error): throw BlockIOError(path, "open", error)
        }
        defer { _ = closeDescriptor(device) }
        try requireLoopDevice(device, path)
        if case .failure(let error) = retryingInterrupts({ snapstack_loop_set_capacity(device.rawValue) }) {
            throw BlockIOError(path, "LOOP_SET_CAPACITY", error)
        }
    }

    private static func requireLoopDevice(_ device: FileDescriptor, _ path: String) throws(BlockIOError) {
        switch statDescriptor(device) {
        case .success(let status):
            guard isBlockDevice(status), DeviceNumber(status.st_rdev).major == major else {
                throw BlockIOError(path: path, reason: .notALoopDevice)
            }
        case .failure(let error): throw BlockIOError(path, "fstat", error)
        }
    }

    /// The bound loop devices, by minor number, from sysfs: each `/sys/block/loopN` whose
    /// `loop/backing_file` exists (the kernel creates the `loop` directory at bind time and
    /// removes it at unbind), with the number from `/sys/block/loopN/dev`. `sysfs` is where
    /// sysfs is mounted (a test gives a tree of its own).
    public static func all(sysfs: String = "/sys") throws(BlockIOError) -> [LoopDevice] {
        let names: [String]
        let block = sysfs + "/block"
        switch directoryEntries(block) {
        case .success(let entries): names = entries.filter { loopIndex(ofName: $0) != nil }
        case .failure(let error): throw BlockIOError(block, "opendir", error)
        }
        var devices: [LoopDevice] = []
        for name in names {
            let backingPath = "\(block)/\(name)/loop/backing_file"
            let backing: String
            switch readWholeFile(backingPath) {
            case .success(let bytes): backing = sysfsValue(bytes)
            // Unbound, or unbound (or removed) since the directory was listed.
            case .failure(.noSuchFileOrDirectory), .failure(.noSuchAddressOrDevice): continue
            case .failure(let error): throw BlockIOError(backingPath, "read", error)
            }
            let devPath = "\(block)/\(name)/dev"
            let number: DeviceNumber
            switch readWholeFile(devPath) {
            case .success(let bytes):
                let text = sysfsValue(bytes)
                guard let parsed = DeviceNumber(parsing: text) else {
                    throw BlockIOError(path: devPath, reason: .unexpectedSysfs(text))
                }
                number = parsed
            case .failure(.noSuchFileOrDirectory), .failure(.noSuchAddressOrDevice): continue
            case .failure(let error): throw BlockIOError(devPath, "read", error)
            }
            devices.append(LoopDevice(path: "/dev/\(name)", number: number, backingFile: backing))
        }
        return devices.sorted { $0.number.minor < $1.number.minor }
    }

    /// The bound loop devices whose backing file is `backingFile`, compared with sysfs's text
    /// both as given and with symbolic links resolved (sysfs shows the resolved path).
    public static func find(backingFile: String) throws(BlockIOError) -> [LoopDevice] {
        var wanted: Set<String> = [backingFile]
        // A file that no longer resolves (deleted, renamed) is still matched by its text.
        if let resolved = realpath(backingFile, nil) {
            wanted.insert(String(cString: resolved))
            free(resolved)
        }
        return try all().filter { device in device.backingFile.map { wanted.contains($0) } ?? false }
    }

    /// N for a sysfs block device name `loopN` (decimal, no sign or leading zero); nil for any
    /// other name, such as `loop-control` or a partition `loop0p1`.
    public static func loopIndex(ofName name: String) -> Int? {
        guard name.hasPrefix("loop") else { return nil }
        let digits = name.dropFirst(4)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              digits == "0" || !digits.hasPrefix("0")
        else { return nil }
        return Int(digits)
    }
}
