/// Where a LUN sits, as every layer below the front end names it: its table identity, its first array stripe and its
/// size. A LUN's stripes are one contiguous run of array stripes (Metadata's LUN table says which).
public struct LUNRef: Sendable, Equatable {
    public let lunID: UInt32
    public let startStripe: UInt64
    public let sizeBytes: UInt64
    public init(lunID: UInt32, startStripe: UInt64, sizeBytes: UInt64) {
        self.lunID = lunID
        self.startStripe = startStripe
        self.sizeBytes = sizeBytes
    }
}
