    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    typedef {{weight_t}} weight_t;
    typedef {{bias_t}} bias_t;
    typedef {{accum_t}} accum_t;
