// {{source}}: {{engine}} {{op}}, {{lanes}} lanes
static void stage_{{name}}({{in_stream_t}} &in, {{out_stream_t}} &out, int n_samples) {
    NNET_STAGE({{stage}});
    for (int s = 0; s < n_samples; s++) {
        nnet::{{function}}<config_{{name}}>(in, out{{arguments}});
    }
}
