/// Errors of the ZramDevice module. The daemon maps them to NBD/errno values.
public enum ZramError: Error, Equatable, Sendable {
    /// The byte range does not lie inside the disk.
    case outOfRange
    /// mem_limit was hit or the pool has no page left (kernel: -ENOMEM, the bio fails).
    case noSpace
    /// A stored page failed to decompress or a page failed to compress (kernel: -EIO).
    case ioError
    /// The device has no disk size (zram before `disksize` is written).
    case notInitialized
    /// The change needs an empty device (kernel: -EBUSY), e.g. the algorithm while data is stored.
    case busy
    /// Writeback was asked for and no backing device is set (zram: -ENODEV).
    case noBackingDevice
    /// A configuration value is out of range; the message says which.
    case invalidArgument(String)
    /// Memory for the device (its slot table or pool) could not be reserved; the message says what.
    case outOfMemory(String)
    /// Inherited state (a predecessor's memfds) that this build cannot read or that does not hold
    /// together; the message says what. The predecessor keeps serving.
    case incompatibleState(String)
}
