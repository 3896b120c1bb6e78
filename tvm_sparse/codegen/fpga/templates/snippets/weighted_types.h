    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    typedef {{weight_t}} weight_t;
    typedef {{bias_t}} bias_t;
    typedef {{accum_t}} accum_t;
    // output o from its accumulator (bias included): int8 multiplies in channel o's scale
    static out_t requantize(accum_t acc, unsigned o) {
{{requantize}}
    }
