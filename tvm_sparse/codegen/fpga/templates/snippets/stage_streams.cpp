// {{source}}: {{engine}} {{op}}, {{lanes}} lanes
static void stage_{{name}}({{stream_params}}, int n_samples) {
    NNET_STAGE({{stage}});
    for (int s = 0; s < n_samples; s++) {
        nnet::{{function}}<config_{{name}}>({{stream_args}});
    }
}
